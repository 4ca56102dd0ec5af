/* Poisson noise image with the C program's generator (ran1 / gaussdev / poidev / gammln of
 * Numerical Recipes, single-precision results), in raster order.  A line-for-line twin of the
 * kernels in rng.py (_ran1_k, _gammln_k, _gaussdev_k, _poidev_k, _noise_k): the same double
 * arithmetic with the same explicit roundings to float, so the images are identical.  Built
 * without fast-math and without FMA contraction, which would change those roundings.
 *
 * State (shared with rng.CRandom):
 *   ist: int64[2 + 32]  iy, iset, iv[32]
 *   fst: double[5]      gset, oldm, sq, alxm, g
 *   seed: int64[1]      the stream's seed variable, updated in place
 */
#include <math.h>
#include <stdint.h>

#define IA 16807
#define IM 2147483647
#define IQ 127773
#define IR 2836
#define NTAB 32
#define NDIV (1 + (IM - 1) / NTAB)
#define I_IY 0
#define I_ISET 1
#define I_IV 2
#define F_GSET 0
#define F_OLDM 1
#define F_SQ 2
#define F_ALXM 3
#define F_G 4

static const double AM = 1.0 / IM;
static const double RNMX = 1.0 - 1.2e-7;
static const double PI = 3.141592653589793;      /* Python math.pi */

static inline double f32(double x) { return (double)(float)x; }

int nb_noise_abi(void) { return 1; }

static double ran1(int64_t *ist, int64_t *seed)
{
    int64_t idum = seed[0], k;
    int j;
    if (idum <= 0 || ist[I_IY] == 0) {
        idum = (-idum < 1) ? 1 : -idum;
        for (j = NTAB + 7; j >= 0; --j) {
            k = idum / IQ;
            idum = IA * (idum - k * IQ) - IR * k;
            if (idum < 0) idum += IM;
            if (j < NTAB) ist[I_IV + j] = idum;
        }
        ist[I_IY] = ist[I_IV];
    }
    k = idum / IQ;
    idum = IA * (idum - k * IQ) - IR * k;
    if (idum < 0) idum += IM;
    seed[0] = idum;
    j = (int)(ist[I_IY] / NDIV);
    ist[I_IY] = ist[I_IV + j];
    ist[I_IV + j] = idum;
    double temp = f32(AM * (double)ist[I_IY]);
    if (temp > RNMX) return f32(RNMX);
    return temp;
}

static double gammln(double xx)
{
    double x = xx, y = xx, tmp, ser;
    tmp = x + 5.5;
    tmp -= (x + 0.5) * log(tmp);
    ser = 1.000000000190015;
    y += 1.0; ser += 76.18009172947146 / y;
    y += 1.0; ser += -86.50532032941677 / y;
    y += 1.0; ser += 24.01409824083091 / y;
    y += 1.0; ser += -1.231739572450155 / y;
    y += 1.0; ser += 0.1208650973866179e-2 / y;
    y += 1.0; ser += -0.5395239384953e-5 / y;
    return f32(-tmp + log(2.5066282746310005 * ser / x));
}

static double gaussdev(int64_t *ist, double *fst, int64_t *seed)
{
    double v1, v2, rsq, fac;
    if (ist[I_ISET] == 0) {
        do {
            v1 = f32(2.0 * ran1(ist, seed) - 1.0);
            v2 = f32(2.0 * ran1(ist, seed) - 1.0);
            rsq = f32(f32(v1 * v1) + f32(v2 * v2));
        } while (rsq >= 1.0 || rsq == 0.0);
        fac = f32(sqrt(-2.0 * log(rsq) / rsq));
        fst[F_GSET] = f32(v1 * fac);
        ist[I_ISET] = 1;
        return f32(v2 * fac);
    }
    ist[I_ISET] = 0;
    return fst[F_GSET];
}

static double poidev(double xm_in, int64_t *ist, double *fst, int64_t *seed)
{
    double xm = f32(xm_in), em, t, g, y, sq, alxm, lnratio;
    if (xm > 1.0e6)
        return f32(xm + sqrt(xm) * gaussdev(ist, fst, seed));
    if (xm < 12.0) {
        if (xm != fst[F_OLDM]) {
            fst[F_OLDM] = xm;
            fst[F_G] = f32(exp(-xm));
        }
        g = fst[F_G];
        em = -1.0;
        t = 1.0;
        do {
            em += 1.0;
            t = f32(t * ran1(ist, seed));
        } while (t > g);
        return em;
    }
    if (xm != fst[F_OLDM]) {
        fst[F_OLDM] = xm;
        fst[F_SQ] = f32(sqrt(2.0 * xm));
        fst[F_ALXM] = f32(log(xm));
        fst[F_G] = f32(f32(xm * fst[F_ALXM]) - gammln(f32(xm + 1.0)));
    }
    sq = fst[F_SQ];
    alxm = fst[F_ALXM];
    g = fst[F_G];
    do {
        do {
            y = f32(tan(PI * ran1(ist, seed)));
            em = f32(f32(sq * y) + xm);
        } while (em < 0.0);
        em = floor(em);
        lnratio = f32(f32(f32(em * alxm) - gammln(f32(em + 1.0))) - g);
        t = f32(0.9 * (1.0 + f32(y * y)) * exp(lnratio));
    } while (ran1(ist, seed) > t);
    return em;
}

static inline uint16_t to_ushort(double value)
{
    /* gcc on x86-64: truncate into a 32-bit int, keep the low bits; NaN/out of range -> 0 */
    if (!(value > -2147483649.0 && value < 2147483648.0)) return 0;
    return (uint16_t)((int64_t)value & 0xFFFF);
}

/* img: float32 (nslow, nfast); out: uint16 (nslow, nfast), pixels outside the ROI untouched.
 * Returns the photon sum; *overloads counts pixels clipped at 65535. */
double nb_noise(const float *img, int64_t nslow, int64_t nfast, int64_t xmin, int64_t xmax,
                int64_t ymin, int64_t ymax, double adc, int64_t *ist, double *fst, int64_t *seed,
                uint16_t *out, int64_t *overloads)
{
    double photons = 0.0, value;
    int64_t s, f, over = 0;
    for (s = 0; s < nslow; ++s) {
        if (s < ymin || s > ymax) continue;
        for (f = 0; f < nfast; ++f) {
            if (f < xmin || f > xmax) continue;
            value = poidev((double)img[s * nfast + f], ist, fst, seed);
            photons += value;
            value += adc;
            if (value > 65535.0) {
                value = 65535.0;
                ++over;
            }
            out[s * nfast + f] = to_ushort(value);
        }
    }
    *overloads = over;
    return photons;
}

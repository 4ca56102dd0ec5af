/* The C generator's random images (ran1 / gaussdev / poidev / gammln of Numerical Recipes,
 * single-precision results) and noisify's pixel loops, for nonBragg's noise image and the
 * noisify program.  ran1/gammln/gaussdev/poidev are line-for-line twins of the kernels in
 * rng.py (_ran1_k, _gammln_k, _gaussdev_k, _poidev_k): the same double arithmetic with the
 * same explicit roundings to float, so the images are identical.  Built without fast-math and
 * without FMA contraction, which would change those roundings.
 *
 * The draws are one serial stream (pixel after pixel, as the C programs); two things make
 * that stream cheaper without changing a bit of it:
 *  - poidev's per-mean set-up (sqrt(2 xm), log xm, xm log xm - gammln(xm + 1)) depends on
 *    the pixel's mean only; where the means are known in advance (nonBragg's image, noisify
 *    without flicker or calibration error) a second thread computes it ahead of the stream;
 *  - gammln(em + 1) of the rejection loop takes integer em: a table filled on first use.
 * Both give the very values the serial code computes (pure functions of their arguments).
 *
 * State (shared with rng.CRandom):
 *   ist: int64[2 + 32]  iy, iset, iv[32]
 *   fst: double[5]      gset, oldm, sq, alxm, g
 *   seed: int64[1]      the stream's seed variable, updated in place
 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

int nb_noise_abi(void) { return 2; }

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

/* gammln(em + 1) for integer em in [0, size): the values the rejection loop meets most, filled
 * ahead (the range of the means plus ten standard deviations, so the table stays in cache);
 * other em are computed */
typedef struct {
    float *v;
    int64_t size;
} lg_table;

#define LGT_MAX (1 << 21)

static void lgt_init(lg_table *t, double max_mean)
{
    t->v = NULL;
    t->size = 0;
    if (!(max_mean >= 12.0)) return;                  /* no rejection branch (or NaN) */
    double top = max_mean > 1.0e6 ? 1.0e6 : max_mean;
    top += 10.0 * sqrt(2.0 * top) + 64.0;
    int64_t n = top < (double)LGT_MAX ? (int64_t)top : LGT_MAX;
    t->v = (float *)malloc(sizeof(float) * (size_t)n);
    if (!t->v) return;
    for (int64_t k = 0; k < n; ++k) t->v[k] = (float)gammln(f32((double)k + 1.0));
    t->size = n;
}

static inline double gammln_em1(double em, const lg_table *t)
{
    /* em: a non-negative integer value (floor of a float) */
    if (em < (double)t->size) return (double)t->v[(int64_t)em];
    return gammln(f32(em + 1.0));
}

static double max_of(const float *a, int64_t n)
{
    float m = 0.0f;
    for (int64_t i = 0; i < n; ++i)
        if (a[i] > m) m = a[i];
    return (double)m;
}

/* poidev's set-up for a mean (xm already rounded to float): pre[0..2] = sq, alxm, g (as the
 * rejection branch stores them) or pre[2] = exp(-xm) (the direct branch) */
static inline void poidev_setup(double xm, float *pre)
{
    if (xm > 1.0e6) return;
    if (xm < 12.0) {
        pre[2] = (float)exp(-xm);
        return;
    }
    double alxm = f32(log(xm));
    pre[0] = (float)sqrt(2.0 * xm);
    pre[1] = (float)alxm;
    pre[2] = (float)(f32(xm * alxm) - gammln(f32(xm + 1.0)));
}

/* poidev with an optional precomputed set-up (pre, or NULL) and gammln table (lgt, or NULL).
 * The float-typed arithmetic below is the C's float arithmetic (rng.py evaluates it in double
 * and rounds each result to float, which gives the same floats). */
static double poidev_x(double xm_in, int64_t *ist, double *fst, int64_t *seed, const float *pre, const lg_table *lgt)
{
    double xm = f32(xm_in);
    if (xm > 1.0e6)
        return f32(xm + sqrt(xm) * gaussdev(ist, fst, seed));
    if (xm < 12.0) {
        if (xm != fst[F_OLDM]) {
            fst[F_OLDM] = xm;
            fst[F_G] = pre ? (double)pre[2] : f32(exp(-xm));
        }
        float g = (float)fst[F_G], t = 1.0f;
        double em = -1.0;
        do {
            em += 1.0;
            t = t * (float)ran1(ist, seed);
        } while (t > g);
        return em;
    }
    if (xm != fst[F_OLDM]) {
        fst[F_OLDM] = xm;
        if (pre) {
            fst[F_SQ] = pre[0];
            fst[F_ALXM] = pre[1];
            fst[F_G] = pre[2];
        } else {
            fst[F_SQ] = f32(sqrt(2.0 * xm));
            fst[F_ALXM] = f32(log(xm));
            fst[F_G] = f32(f32(xm * fst[F_ALXM]) - gammln(f32(xm + 1.0)));
        }
    }
    const float sq = (float)fst[F_SQ], alxm = (float)fst[F_ALXM], g = (float)fst[F_G], xmf = (float)xm;
    float em, y, t, lnratio;
    do {
        do {
            y = (float)tan(PI * ran1(ist, seed));
            em = sq * y + xmf;
        } while (em < 0.0f);
        em = floorf(em);
        lnratio = (em * alxm - (float)gammln_em1((double)em, lgt)) - g;
        t = (float)(0.9 * (1.0 + (double)(y * y)) * exp((double)lnratio));
    } while ((float)ran1(ist, seed) > t);
    return (double)em;
}

/* ---- a helper thread that computes poidev's set-up ahead of the serial stream ---------- */
#define PRE_BLOCK 4096

typedef struct {
    const float *means;       /* (n,) the means, in the order the stream draws them */
    int64_t n;
    float *pre;               /* (n, 3) */
    _Atomic int64_t ready;    /* entries [0, ready) are done */
    _Atomic int stop;
} pre_job;

static void pre_range(pre_job *job, int64_t lo, int64_t hi)
{
    for (int64_t q = lo; q < hi; ++q)
        poidev_setup(f32((double)job->means[q]), job->pre + 3 * q);
}

static void *pre_worker(void *arg)
{
    pre_job *job = (pre_job *)arg;
    for (int64_t lo = 0; lo < job->n; lo += PRE_BLOCK) {
        if (atomic_load_explicit(&job->stop, memory_order_relaxed)) break;
        int64_t hi = lo + PRE_BLOCK < job->n ? lo + PRE_BLOCK : job->n;
        pre_range(job, lo, hi);
        atomic_store_explicit(&job->ready, hi, memory_order_release);
    }
    return NULL;
}

typedef struct {
    pre_job job;
    pthread_t thread;
    int threaded;
    int64_t known;            /* consumer's copy of ready */
} pre_ctx;

/* start computing the set-up of ``means`` (NULL pre: no precomputation, e.g. out of memory) */
static void pre_start(pre_ctx *c, const float *means, int64_t n, int nthreads)
{
    memset(c, 0, sizeof(*c));
    c->job.means = means;
    c->job.n = n;
    c->job.pre = n > 0 ? (float *)malloc(sizeof(float) * 3 * (size_t)n) : NULL;
    atomic_init(&c->job.ready, 0);
    atomic_init(&c->job.stop, 0);
    if (c->job.pre && nthreads > 1 && n > 2 * PRE_BLOCK)
        c->threaded = pthread_create(&c->thread, NULL, pre_worker, &c->job) == 0;
}

/* the set-up of entry q (waits for the helper, or computes a block itself) */
static inline const float *pre_get(pre_ctx *c, int64_t q)
{
    if (!c->job.pre) return NULL;
    if (q >= c->known) {
        if (c->threaded) {
            while ((c->known = atomic_load_explicit(&c->job.ready, memory_order_acquire)) <= q)
                sched_yield();
        } else {
            int64_t hi = q + PRE_BLOCK < c->job.n ? q + PRE_BLOCK : c->job.n;
            pre_range(&c->job, q, hi);
            c->known = hi;
        }
    }
    return c->job.pre + 3 * q;
}

static void pre_finish(pre_ctx *c)
{
    if (c->threaded) {
        atomic_store(&c->job.stop, 1);
        pthread_join(c->thread, NULL);
    }
    free(c->job.pre);
}

static inline uint16_t to_ushort(double value)
{
    /* gcc on x86-64: truncate into a 32-bit int, keep the low bits; NaN/out of range -> 0 */
    if (!(value > -2147483649.0 && value < 2147483648.0)) return 0;
    return (uint16_t)((int64_t)value & 0xFFFF);
}

static inline uint32_t to_uint_via_i64(double a)
{
    /* (unsigned int) of a double on x86-64 gcc: cvttsd2si 64-bit, low 32 bits */
    if (a > -9.2e18 && a < 9.2e18) return (uint32_t)((int64_t)a & 0xFFFFFFFF);
    return 0;
}

/* ---- nonBragg's noise image ------------------------------------------------------------- */
/* img: float32 (nslow, nfast); out: uint16 (nslow, nfast), pixels outside the ROI untouched.
 * Returns the photon sum; *overloads counts pixels clipped at 65535. */
double nb_noise(const float *img, int64_t nslow, int64_t nfast, int64_t xmin, int64_t xmax,
                int64_t ymin, int64_t ymax, double adc, int64_t *ist, double *fst, int64_t *seed,
                uint16_t *out, int64_t *overloads, int nthreads)
{
    double photons = 0.0, value;
    int64_t s, f, over = 0;
    int64_t f0 = xmin > 0 ? xmin : 0, f1 = xmax < nfast - 1 ? xmax : nfast - 1;
    int64_t s0 = ymin > 0 ? ymin : 0, s1 = ymax < nslow - 1 ? ymax : nslow - 1;
    int64_t w = f1 - f0 + 1, h = s1 - s0 + 1, q = 0;
    float *means = NULL;
    lg_table lgt;
    pre_ctx pc;
    if (w > 0 && h > 0) {
        if (f0 == 0 && w == nfast) {
            pre_start(&pc, img + s0 * nfast, w * h, nthreads);
        } else {
            means = (float *)malloc(sizeof(float) * (size_t)(w * h));
            if (means)
                for (s = s0; s <= s1; ++s)
                    memcpy(means + (s - s0) * w, img + s * nfast + f0, sizeof(float) * (size_t)w);
            pre_start(&pc, means, means ? w * h : 0, nthreads);
        }
    } else {
        pre_start(&pc, NULL, 0, 1);
    }
    double max_mean = 0.0;
    for (s = s0; s <= s1; ++s) {
        double m = max_of(img + s * nfast + f0, w);
        if (m > max_mean) max_mean = m;
    }
    lgt_init(&lgt, max_mean);
    for (s = s0; s <= s1; ++s) {
        for (f = f0; f <= f1; ++f, ++q) {
            value = poidev_x((double)img[s * nfast + f], ist, fst, seed, pre_get(&pc, q), &lgt);
            photons += value;
            value += adc;
            if (value > 65535.0) {
                value = 65535.0;
                ++over;
            }
            out[s * nfast + f] = to_ushort(value);
        }
    }
    pre_finish(&pc);
    free(means);
    free(lgt.v);
    *overloads = over;
    return photons;
}

/* ---- noisify ---------------------------------------------------------------------------- */
/* flicker, calibration and Poisson draws per pixel in raster order (noisify's noise loop);
 * counts: float32 photon counts; returns the photon sum (of the float counts) */
double nb_photon_noise(const float *photons, int64_t n, double flicker, double calib, int64_t *ist,
                       double *fst, int64_t *seed, int64_t *cseed, float *counts, int nthreads)
{
    double total = 0.0, p0, v;
    lg_table lgt;
    pre_ctx pc;
    int known = !(flicker > 0.0) && !(calib > 0.0);    /* the means are the photons themselves */
    pre_start(&pc, photons, known ? n : 0, nthreads);
    /* flicker and calibration scale the means by 1 + rms z (|z| < 7 in practice) */
    lgt_init(&lgt, max_of(photons, n) * (1.0 + 7.0 * ((flicker > 0.0 ? flicker : 0.0) + (calib > 0.0 ? calib : 0.0))));
    for (int64_t i = 0; i < n; ++i) {
        p0 = (double)photons[i];
        if (flicker > 0.0) p0 *= 1.0 + flicker * gaussdev(ist, fst, seed);
        if (calib > 0.0) p0 *= 1.0 + calib * gaussdev(ist, fst, cseed);
        v = poidev_x(p0, ist, fst, seed, known ? pre_get(&pc, i) : NULL, &lgt);
        counts[i] = (float)v;
        total += f32(v);
    }
    pre_finish(&pc);
    free(lgt.v);
    return total;
}

/* the C's conversion of gain * value + adc to its integer images (noisify's noise-free loop,
 * and with gain 1, adc 0 its noisy one); out16/out32/pgm may be NULL; returns the overloads */
int64_t nb_adu_ints(const void *values, int is_double, int64_t n, double gain, double adc, int clip16,
                    int bits, uint16_t *out16, uint32_t *out32, uint8_t *pgm)
{
    int64_t over = 0;
    for (int64_t i = 0; i < n; ++i) {
        double a = (is_double ? ((const double *)values)[i] : (double)((const float *)values)[i]) * gain + adc;
        if (a > 2147483647.0) {
            a = 2147483647.0;
            if (bits == 32) ++over;
        }
        if (clip16 && a > 65535.0) a = 65535.0;
        if (out32) out32[i] = to_uint_via_i64(a);
        if (a > 65535.0) {
            a = 65535.0;
            if (bits == 16) ++over;
        }
        uint16_t u = to_ushort(a);
        if (out16) out16[i] = u;
        if (pgm) pgm[i] = (uint8_t)(u > 255 ? 255 : u);
    }
    return over;
}

/* gain, offset and read-out noise per pixel in raster order, then the integer images;
 * returns the photon sum, *overloads as nb_adu_ints with gain 1, adc 0, no 16-bit clip */
double nb_readout(const float *counts, int64_t n, double gain, double adc, double readout, int bits,
                  int64_t *ist, double *fst, int64_t *seed, uint16_t *out16, uint32_t *out32,
                  int64_t *overloads)
{
    double total = 0.0;
    int64_t over = 0;
    for (int64_t i = 0; i < n; ++i) {
        double p = (double)counts[i];
        total += p;
        double adu = p * gain + adc;
        if (readout > 0.0) adu += readout * gaussdev(ist, fst, seed);
        double a = adu * 1.0 + 0.0;
        if (a > 2147483647.0) {
            a = 2147483647.0;
            if (bits == 32) ++over;
        }
        if (out32) out32[i] = to_uint_via_i64(a);
        if (a > 65535.0) {
            a = 65535.0;
            if (bits == 16) ++over;
        }
        if (out16) out16[i] = to_ushort(a);
    }
    *overloads = over;
    return total;
}

/* ---- noisify's PSF ---------------------------------------------------------------------- */
static double gauss_integ(double x, double y)
{
    return 0.125 * (erf(2 * x * sqrt(log(2))) * erf(y * sqrt(log(16))) * sqrt(log(16) / log(2)));
}

static double fiber_integ(double x, double y, double g)
{
    return atan((x * y) / (g * sqrt(g * g + x * x + y * y))) / 2.0 / M_PI;
}

/* the C's kernel: (2R+1)^2 doubles, rows = dy, zero outside the disc */
void nb_psf_kernel(int gauss, double fwhm, double g, int64_t R, double *kernel)
{
    int64_t K = 2 * R + 1;
    for (int64_t dy = -R; dy <= R; ++dy) {
        for (int64_t dx = -R; dx <= R; ++dx) {
            int64_t k = K * (K / 2 + dy) + K / 2 + dx;
            kernel[k] = 0.0;
            if (dx * dx + dy * dy > R * R) continue;
            if (gauss) {
                double x = (double)dx / fwhm, y = (double)dy / fwhm, pix = 1.0 / fwhm;
                kernel[k] = gauss_integ(x + pix / 2., y + pix / 2.) - gauss_integ(x + pix / 2., y - pix / 2.)
                          - gauss_integ(x - pix / 2., y + pix / 2.) + gauss_integ(x - pix / 2., y - pix / 2.);
            } else {
                double x = (double)dx, y = (double)dy, pix = 1.0;
                kernel[k] = fiber_integ(x + pix / 2., y + pix / 2., g) - fiber_integ(x + pix / 2., y - pix / 2., g)
                          - fiber_integ(x - pix / 2., y + pix / 2., g) + fiber_integ(x - pix / 2., y - pix / 2., g);
            }
        }
    }
}

typedef struct {
    const float *img;
    int64_t nx, ny, R, user_radius, maxwidth;
    int gauss, wrap;
    double fwhm, g;
    const double *kernel;
    int32_t *radius;
    double *lost;
    float *out;
    _Atomic int64_t next;
    int phase;                /* 0: radii and lost photons, 1: the sums */
    int64_t tab_size;         /* radius and lost photons of the integers [0, tab_size) */
    int32_t *tab_radius;
    double *tab_lost;
} psf_job;

#define PSF_ROWS 8

/* the C's radius and lost photons of a source pixel of v > 0 photons */
static inline void psf_radius_one(const psf_job *j, double v, int32_t *radius, double *lost)
{
    const double log16 = log(16.0);
    int64_t r;
    if (j->user_radius != 0) {
        r = j->user_radius;
    } else {
        double lp = sqrt(v) / 10.0;
        if (j->gauss) {
            double a = -log(lp / v) / log16;
            /* a < 0 (fewer than 0.01 photons): the C reads outside its kernel there; radius 1 */
            r = a >= 0.0 ? 1 + (int64_t)ceil(sqrt(a) * j->fwhm) : 1;
        } else {
            r = 1 + (int64_t)ceil(j->g * (v / lp));
        }
    }
    if (r == 0) r = 1;
    if (r > j->maxwidth) r = j->maxwidth;
    *radius = (int32_t)r;
    if (j->gauss) {
        double rsq = (double)r;
        rsq = rsq / j->fwhm;
        rsq = rsq * rsq;
        *lost = v * exp(-log16 * rsq);
    } else {
        *lost = v * j->g / sqrt(j->g * j->g + (double)(r * r));
    }
}

static void psf_radius_rows(psf_job *j, int64_t y0, int64_t y1)
{
    for (int64_t i = y0 * j->nx; i < y1 * j->nx; ++i) {
        double v = (double)j->img[i];
        if (!(v > 0.0)) {
            j->radius[i] = -1;
            j->lost[i] = 0.0;
        } else if (v < (double)j->tab_size && v == (double)(int64_t)v) {
            /* photon counts: the values of the table (the same function of v) */
            j->radius[i] = j->tab_radius[(int64_t)v];
            j->lost[i] = j->tab_lost[(int64_t)v];
        } else {
            psf_radius_one(j, v, j->radius + i, j->lost + i);
        }
    }
}

/* the sum for one target pixel, sources in the C's order (rng-free twin of noisify._psf_target) */
static float psf_target(const psf_job *j, int64_t yt, int64_t xt)
{
    const int64_t nx = j->nx, ny = j->ny, R = j->R, K = 2 * R + 1;
    const int wrap = j->wrap;
    float acc = 0.0f;
    int64_t ylo = (wrap && xt == 0) ? yt - R - 1 : yt - R;
    if (ylo < 0) ylo = 0;
    int64_t yhi = yt + R;
    if (yhi > ny - 1) yhi = ny - 1;
    for (int64_t ys = ylo; ys <= yhi; ++ys) {
        int64_t dy = yt - ys;
        int normal = dy >= -R && dy <= R;
        int64_t dyw = yt - 1 - ys;
        int wrapped = wrap && xt == 0 && yt >= 1 && dyw >= -R && dyw <= R;
        int64_t xlo, xhi;
        if (normal) {
            xlo = xt - R;
            if (xlo < 0) xlo = 0;
            xhi = xt + R;
        } else {
            xlo = nx;
            xhi = -1;
        }
        if (xhi > nx - 1) xhi = nx - 1;
        int64_t wlo = wrapped ? nx - R : nx;
        if (wlo < 0) wlo = 0;
        int64_t a0, a1, b0, b1;
        if (wlo <= xhi + 1) {
            a0 = xlo < wlo ? xlo : wlo;
            a1 = wlo < nx ? nx - 1 : xhi;
            b0 = 1;
            b1 = 0;
        } else {
            a0 = xlo; a1 = xhi; b0 = wlo; b1 = nx - 1;
        }
        int64_t na = a1 >= a0 ? a1 - a0 + 1 : 0, nb = b1 >= b0 ? b1 - b0 + 1 : 0;
        for (int64_t q = 0; q < na + nb; ++q) {
            int64_t xs = q < na ? a0 + q : b0 + (q - na);
            int64_t i = ys * nx + xs;
            int64_t r = j->radius[i];
            if (r < 0) continue;
            double v = (double)j->img[i];
            if (normal && xs >= xlo && xs <= xhi) {
                int64_t dx = xt - xs;
                if (dx * dx + dy * dy <= r * r)
                    acc = (float)((double)acc + v * j->kernel[(R + dy) * K + R + dx]);
            }
            if (wrapped && xs >= wlo) {
                int64_t dx = nx - xs;
                if (dx <= R && dx * dx + dyw * dyw <= r * r)
                    acc = (float)((double)acc + v * j->kernel[(R + dyw) * K + R + dx]);
            }
        }
    }
    return acc;
}

#define PSF_VECS 4
#define PSF_LANES (8 * PSF_VECS)
typedef float v8f __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));
typedef int32_t v8i __attribute__((vector_size(32)));

static void psf_row(const psf_job *j, int64_t yt)
{
    const int64_t nx = j->nx, ny = j->ny, R = j->R, K = 2 * R + 1;
    const float *img = j->img;
    const int32_t *radius = j->radius;
    int64_t ylo = yt - R, yhi = yt + R;
    if (ylo < 0) ylo = 0;
    if (yhi > ny - 1) yhi = ny - 1;
    int64_t xt = 0;
    while (xt < nx) {
        if (xt >= R && xt >= 1 && xt + PSF_LANES - 1 + R <= nx - 1) {
            /* PSF_LANES interior targets at once (independent float sums, each in its sources'
             * order): every source of their row windows lies on the image, none wraps */
            v8f acc[PSF_VECS];
            for (int q = 0; q < PSF_VECS; ++q) acc[q] = (v8f){0};
            for (int64_t ys = ylo; ys <= yhi; ++ys) {
                int64_t dy = yt - ys;
                const double *krow = j->kernel + (R + dy) * K + R;
                int64_t base = ys * nx + xt - R;
                for (int64_t u = 0; u <= 2 * R; ++u) {
                    int64_t dx = R - u;
                    const int32_t d2 = (int32_t)(dx * dx + dy * dy);
                    const double kk = krow[dx];
                    for (int q = 0; q < PSF_VECS; ++q) {
                        v8f v;
                        v8i r;
                        __builtin_memcpy(&v, img + base + u + 8 * q, sizeof v);
                        __builtin_memcpy(&r, radius + base + u + 8 * q, sizeof r);
                        /* float + float * double in double, rounded to float: the C's outimage[j] += ... */
                        v8d sum = __builtin_convertvector(acc[q], v8d) + __builtin_convertvector(v, v8d) * kk;
                        v8f res = __builtin_convertvector(sum, v8f);
                        v8i take = (r >= 0) & (r * r >= d2);
                        acc[q] = (v8f)(((v8i)res & take) | ((v8i)acc[q] & ~take));
                    }
                }
            }
            __builtin_memcpy(j->out + yt * nx + xt, acc, sizeof acc);
            xt += PSF_LANES;
        } else {
            j->out[yt * nx + xt] = psf_target(j, yt, xt);
            ++xt;
        }
    }
}

static void *psf_worker(void *arg)
{
    psf_job *j = (psf_job *)arg;
    for (;;) {
        int64_t y0 = atomic_fetch_add(&j->next, PSF_ROWS);
        if (y0 >= j->ny) break;
        int64_t y1 = y0 + PSF_ROWS < j->ny ? y0 + PSF_ROWS : j->ny;
        if (j->phase == 0)
            psf_radius_rows(j, y0, y1);
        else
            for (int64_t y = y0; y < y1; ++y) psf_row(j, y);
    }
    return NULL;
}

static void psf_parallel(psf_job *j, int nthreads)
{
    pthread_t th[64];
    int started = 0;
    if (nthreads > 64) nthreads = 64;
    atomic_store(&j->next, 0);
    for (int t = 1; t < nthreads; ++t)
        if (pthread_create(&th[started], NULL, psf_worker, j) == 0) ++started;
    psf_worker(j);
    for (int t = 0; t < started; ++t) pthread_join(th[t], NULL);
}

/* noisify's apply_psf after the radius choice: out (nx*ny float32) = the blurred image plus the
 * lost photons spread evenly; returns the total of lost photons (summed in pixel order, as the C).
 * Returns -1 when memory runs out (nothing written). */
double nb_psf(const float *img, int64_t nx, int64_t ny, int gauss, double fwhm, double g, int64_t user_radius,
              int64_t R, int wrap, const double *kernel, float *out, int nthreads)
{
    int64_t n = nx * ny;
    psf_job j;
    memset(&j, 0, sizeof(j));
    j.img = img; j.nx = nx; j.ny = ny; j.R = R; j.user_radius = user_radius;
    j.maxwidth = nx > ny ? nx : ny;
    j.gauss = gauss; j.wrap = wrap; j.fwhm = fwhm; j.g = g; j.kernel = kernel; j.out = out;
    j.radius = (int32_t *)malloc(sizeof(int32_t) * (size_t)n);
    j.lost = (double *)malloc(sizeof(double) * (size_t)n);
    if (!j.radius || !j.lost) {
        free(j.radius);
        free(j.lost);
        return -1.0;
    }
    /* the noise image's counts are integers: their radii and lost photons once per value */
    float vmax = 0.0f;
    int64_t integers = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (img[i] > vmax) vmax = img[i];
        integers += img[i] == (float)(int64_t)img[i];
    }
    if (integers > n / 2 && vmax < (float)(1 << 22) && (double)vmax < 0.5 * (double)n) {
        int64_t size = (int64_t)vmax + 1;
        j.tab_radius = (int32_t *)malloc(sizeof(int32_t) * (size_t)size);
        j.tab_lost = (double *)malloc(sizeof(double) * (size_t)size);
        if (j.tab_radius && j.tab_lost) {
            j.tab_radius[0] = -1;
            j.tab_lost[0] = 0.0;
            for (int64_t k = 1; k < size; ++k) psf_radius_one(&j, (double)k, j.tab_radius + k, j.tab_lost + k);
            j.tab_size = size;
        }
    }
    j.phase = 0;
    psf_parallel(&j, nthreads);
    free(j.tab_radius);
    free(j.tab_lost);
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += j.lost[i];
    j.phase = 1;
    psf_parallel(&j, nthreads);
    double add = total / (double)n;
    for (int64_t i = 0; i < n; ++i) out[i] = (float)((double)out[i] + add);
    free(j.radius);
    free(j.lost);
    return total;
}

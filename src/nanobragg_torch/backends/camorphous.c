/* nonBragg's amorphous-scattering sum and its image outputs, as a small C library (see
 * camorphous.py).  A twin of the numba kernels in physics/amorphous_kernel.py (_render_k,
 * _outputs_k): one pass per pixel over sub-pixels and sources in double precision, the
 * table's per-interval cubics, the polarization factor and the solid angle; rows of the
 * image on several threads.  Built without fast-math or FMA contraction, so each pixel's
 * arithmetic is the numba kernel's, operation for operation.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int nb_amorphous_abi(void) { return 1; }


typedef struct {
    int64_t S, F, O, nsrc, nk;
    int32_t curved, point_pixel, nopolar, fmap;
    int64_t roi[4];                 /* xmin, xmax, ymin, ymax (inclusive) */
    double pix0[3], fdet[3], sdet[3], beam[3];
    double distance, close, px, kahn, scale;
    double pol_axis[3];
    const double *inc;              /* (nsrc, 3) */
    const double *lam;              /* (nsrc,) Angstrom */
    const double *w;                /* (nsrc,) */
    const double *knots;            /* (nk,) */
    const double *coef;             /* (nk + 1, 4) */
    const double *org;              /* (nk + 1,) */
    float *out;                     /* (S, F) */
} nb_amorphous_params;

/* The interval of a stol value is the number of knots <= stol (knots sorted: one answer, however
 * it is found).  A walk from the last pixel's interval takes several unpredictable steps a
 * sub-pixel on a fine table (water.stol: 10000 knots 5e-5 apart), so the walk starts from a
 * bucket's count instead: nb buckets of equal width over [kmin, kmax], start[b] the count at
 * bucket b's lower edge, kx the knots with +inf after the last. */
typedef struct {
    int64_t nb;                 /* 0: no buckets (fewer than two knots, or not sorted) */
    double kmin, inv;           /* bucket of x: (x - kmin) * inv */
    int32_t *start;             /* (nb,) */
    double *kx;                 /* (nk + 1,) */
} buckets_t;

static void buckets_init(buckets_t *bk, const double *knots, int64_t nk)
{
    memset(bk, 0, sizeof(*bk));
    if (nk < 2) return;
    for (int64_t i = 0; i + 1 < nk; ++i)
        if (!(knots[i] <= knots[i + 1])) return;           /* unsorted or NaN: the walk only */
    double kmin = knots[0], span = knots[nk - 1] - kmin;
    if (!(span > 0.0) || !isfinite(span)) return;
    if (nk > INT32_MAX - 1) return;
    int64_t nb = 2 * nk < (1 << 22) ? 2 * nk : (1 << 22);
    bk->start = (int32_t *)malloc(sizeof(int32_t) * (size_t)nb);
    bk->kx = (double *)malloc(sizeof(double) * (size_t)(nk + 1));
    if (!bk->start || !bk->kx) {
        free(bk->start);
        free(bk->kx);
        bk->start = NULL;
        bk->kx = NULL;
        return;
    }
    memcpy(bk->kx, knots, sizeof(double) * (size_t)nk);
    bk->kx[nk] = INFINITY;
    int64_t c = 0;
    for (int64_t b = 0; b < nb; ++b) {
        double edge = kmin + span * ((double)b / (double)nb);
        while (c < nk && knots[c] <= edge) ++c;
        bk->start[b] = (int32_t)c;
    }
    bk->nb = nb;
    bk->kmin = kmin;
    bk->inv = (double)nb / span;
}

static void buckets_free(buckets_t *bk)
{
    free(bk->start);
    free(bk->kx);
}

/* the number of knots <= st, walked from lo (the same count from any start) */
static inline int64_t interval_walk(const double *knots, int64_t nk, int64_t lo, double st)
{
    while (lo < nk && knots[lo] <= st) ++lo;
    while (lo > 0 && knots[lo - 1] > st) --lo;
    return lo;
}

/* a start for the walk: the bucket's count and two steps without a branch (most often the count
 * itself; branch-free, so a loop of it over a block's pixels is SIMD with gathers) */
static inline int64_t interval_guess(const buckets_t *bk, int64_t nk, double st)
{
    double t = (st - bk->kmin) * bk->inv;
    t = t >= 0.0 ? t : 0.0;                                  /* NaN: 0 */
    t = t < (double)bk->nb ? t : (double)bk->nb - 1.0;
    int64_t lo = bk->start[(int64_t)t];
    lo += bk->kx[lo] <= st;                   /* kx[nk] = inf: lo stays <= nk (but for st = inf) */
    lo = lo < nk ? lo : nk;
    lo += bk->kx[lo] <= st;
    return lo < nk ? lo : nk;
}

typedef struct {
    const nb_amorphous_params *p;
    const buckets_t *bk;
    _Atomic int64_t next;
} job_t;

/* the polarization frame of an incident direction i: B = axis x i and E = i x B, unit vectors */
static inline void pol_basis(const double *a, double ix, double iy, double iz, double *bx_, double *by_,
                             double *bz_, double *ex_, double *ey_, double *ez_)
{
    double bx = a[1] * iz - a[2] * iy;
    double by = a[2] * ix - a[0] * iz;
    double bz = a[0] * iy - a[1] * ix;
    double bn = sqrt(bx * bx + by * by + bz * bz);
    bx = bx / bn; by = by / bn; bz = bz / bn;
    double ex = iy * bz - iz * by;
    double ey = iz * bx - ix * bz;
    double ez = ix * by - iy * bx;
    double en = sqrt(ex * ex + ey * ey + ez * ez);
    *bx_ = bx; *by_ = by; *bz_ = bz;
    *ex_ = ex / en; *ey_ = ey / en; *ez_ = ez / en;
}

static void render_row(const nb_amorphous_params *p, const buckets_t *bk, int64_t s)
{
    const int64_t F = p->F, O = p->O, nk = p->nk, nsrc = p->nsrc;
    const double sub = p->px / (double)O;
    const double px2close = p->px * p->px * p->close;
    const double *fdet = p->fdet, *sdet = p->sdet, *pix0 = p->pix0, *beam = p->beam;
    int64_t lo = 0;
    for (int64_t f = 0; f < F; ++f) {
        if (f < p->roi[0] || f > p->roi[1] || s < p->roi[2] || s > p->roi[3]) {
            p->out[s * F + f] = 0.0f;
            continue;
        }
        double Ibg = 0.0, Fbg = 0.0;
        for (int64_t subS = 0; subS < O; ++subS) {
            for (int64_t subF = 0; subF < O; ++subF) {
                double Fdet = sub * (double)(f * O + subF) + sub / 2.0;
                double Sdet = sub * (double)(s * O + subS) + sub / 2.0;
                double x = Fdet * fdet[0] + Sdet * sdet[0] + pix0[0];
                double y = Fdet * fdet[1] + Sdet * sdet[1] + pix0[1];
                double z = Fdet * fdet[2] + Sdet * sdet[2] + pix0[2];
                if (p->curved) {
                    double vx = p->distance * beam[0], vy = p->distance * beam[1], vz = p->distance * beam[2];
                    for (int step = 0; step < 2; ++step) {
                        double ax, ay, az, phi;
                        if (step == 0) {
                            ax = sdet[0]; ay = sdet[1]; az = sdet[2]; phi = y / p->distance;
                        } else {
                            ax = fdet[0]; ay = fdet[1]; az = fdet[2]; phi = z / p->distance;
                        }
                        double sn = sin(phi), cs = cos(phi);
                        double dot = (ax * vx + ay * vy + az * vz) * (1.0 - cs);
                        double nx = ax * dot + vx * cs + (-az * vy + ay * vz) * sn;
                        double ny = ay * dot + vy * cs + (az * vx - ax * vz) * sn;
                        double nz = az * dot + vz * cs + (-ay * vx + ax * vy) * sn;
                        vx = nx; vy = ny; vz = nz;
                    }
                    x = vx; y = vy; z = vz;
                }
                double air = sqrt(x * x + y * y + z * z);
                double inv = 1.0 / air;
                double dx = x * inv, dy = y * inv, dz = z * inv;
                double omega = p->point_pixel ? inv * inv : px2close * inv * inv * inv;
                for (int64_t n = 0; n < nsrc; ++n) {
                    double ix = p->inc[3 * n], iy = p->inc[3 * n + 1], iz = p->inc[3 * n + 2];
                    double qx = dx - ix, qy = dy - iy, qz = dz - iz;
                    double stol = (0.5 / p->lam[n]) * sqrt(qx * qx + qy * qy + qz * qz);
                    /* the number of knots <= stol is the interval, walked from the bucket's guess
                     * (or the last one) */
                    lo = interval_walk(p->knots, nk, bk->nb ? interval_guess(bk, nk, stol) : lo, stol);
                    const double *c = p->coef + 4 * lo;
                    double t = stol - p->org[lo];
                    Fbg = ((c[3] * t + c[2]) * t + c[1]) * t + c[0];
                    double sign = Fbg < 0.0 ? -1.0 : 1.0;
                    double polar;
                    if (p->nopolar) {
                        polar = 1.0;
                    } else {
                        double c2t = ix * dx + iy * dy + iz * dz;
                        double c2s = c2t * c2t;
                        double s2s = 1.0 - c2s;
                        if (p->kahn != 0.0) {
                            double bx, by, bz, ex, ey, ez;
                            pol_basis(p->pol_axis, ix, iy, iz, &bx, &by, &bz, &ex, &ey, &ez);
                            double psi = -atan2(dx * bx + dy * by + dz * bz, dx * ex + dy * ey + dz * ez);
                            polar = 0.5 * (1.0 + c2s - p->kahn * cos(2 * psi) * s2s);
                        } else {
                            polar = 0.5 * (1.0 + c2s);
                        }
                    }
                    Ibg += sign * Fbg * Fbg * polar * omega * p->w[n];
                }
            }
        }
        p->out[s * F + f] = p->fmap ? (float)Fbg : (float)(Ibg * p->scale);
    }
}

/* The same sums for a flat detector, a block of pixels at a time: the per-sub-pixel and
 * per-source steps as loops over the block's pixels that the compiler turns into SIMD code
 * (IEEE operations lane by lane, no contraction: each pixel's arithmetic is render_row's,
 * and each pixel's sum runs over sub-pixels and sources in the same order). */
#define BLK 256

static void render_row_blocks(const nb_amorphous_params *p, const buckets_t *bk, int64_t s)
{
    const int64_t F = p->F, O = p->O, nk = p->nk, nsrc = p->nsrc;
    const double sub = p->px / (double)O;
    const double px2close = p->px * p->px * p->close;
    const double f0 = p->fdet[0], f1 = p->fdet[1], f2 = p->fdet[2];
    const double s0 = p->sdet[0], s1 = p->sdet[1], s2 = p->sdet[2];
    const double p0 = p->pix0[0], p1 = p->pix0[1], p2 = p->pix0[2];
    const int point_pixel = p->point_pixel, nopolar = p->nopolar;
    const double kahn = p->kahn;
    double dxa[BLK], dya[BLK], dza[BLK], om[BLK], stol[BLK], Fb[BLK], Ib[BLK], pol[BLK];
    int64_t idx[BLK];
    int in_rows = !(s < p->roi[2] || s > p->roi[3]);
    int64_t lo = 0;
    for (int64_t fb = 0; fb < F; fb += BLK) {
        const int64_t nb = fb + BLK <= F ? BLK : F - fb;
        /* pixels of the block inside the ROI: [a, b) (the rest are 0) */
        int64_t a = 0, b = 0;
        if (in_rows) {
            a = p->roi[0] - fb;
            b = p->roi[1] + 1 - fb;
            if (a < 0) a = 0;
            if (b > nb) b = nb;
            if (b < a) b = a;
        }
        for (int64_t i = 0; i < nb; ++i) {
            p->out[s * F + fb + i] = 0.0f;
            Ib[i] = 0.0;
            Fb[i] = 0.0;
        }
        if (a >= b) continue;
        for (int64_t subS = 0; subS < O; ++subS) {
            const double Sdet = sub * (double)(s * O + subS) + sub / 2.0;
            for (int64_t subF = 0; subF < O; ++subF) {
                for (int64_t i = a; i < b; ++i) {
                    double Fdet = sub * (double)((fb + i) * O + subF) + sub / 2.0;
                    double x = Fdet * f0 + Sdet * s0 + p0;
                    double y = Fdet * f1 + Sdet * s1 + p1;
                    double z = Fdet * f2 + Sdet * s2 + p2;
                    double air = sqrt(x * x + y * y + z * z);
                    double inv = 1.0 / air;
                    dxa[i] = x * inv;
                    dya[i] = y * inv;
                    dza[i] = z * inv;
                    om[i] = point_pixel ? inv * inv : px2close * inv * inv * inv;
                }
                for (int64_t n = 0; n < nsrc; ++n) {
                    const double ix = p->inc[3 * n], iy = p->inc[3 * n + 1], iz = p->inc[3 * n + 2];
                    const double h = 0.5 / p->lam[n], wn = p->w[n];
                    for (int64_t i = a; i < b; ++i) {
                        double qx = dxa[i] - ix, qy = dya[i] - iy, qz = dza[i] - iz;
                        stol[i] = h * sqrt(qx * qx + qy * qy + qz * qz);
                    }
                    if (bk->nb) {
                        /* the guesses for the block's pixels (SIMD), then the walk from each
                         * (no step where the guess is the count) */
                        for (int64_t i = a; i < b; ++i) idx[i] = interval_guess(bk, nk, stol[i]);
                        for (int64_t i = a; i < b; ++i) idx[i] = interval_walk(p->knots, nk, idx[i], stol[i]);
                    } else {
                        for (int64_t i = a; i < b; ++i) idx[i] = lo = interval_walk(p->knots, nk, lo, stol[i]);
                    }
                    const double *coef = p->coef, *org = p->org;
                    for (int64_t i = a; i < b; ++i) {
                        const int64_t k = idx[i];
                        double t = stol[i] - org[k];
                        Fb[i] = ((coef[4 * k + 3] * t + coef[4 * k + 2]) * t + coef[4 * k + 1]) * t + coef[4 * k];
                    }
                    if (nopolar) {
                        for (int64_t i = a; i < b; ++i) pol[i] = 1.0;
                    } else if (kahn != 0.0) {
                        double bx, by, bz, ex, ey, ez;
                        pol_basis(p->pol_axis, ix, iy, iz, &bx, &by, &bz, &ex, &ey, &ez);
                        for (int64_t i = a; i < b; ++i) {
                            double dx = dxa[i], dy = dya[i], dz = dza[i];
                            double c2t = ix * dx + iy * dy + iz * dz;
                            double c2s = c2t * c2t;
                            double s2s = 1.0 - c2s;
                            double psi = -atan2(dx * bx + dy * by + dz * bz, dx * ex + dy * ey + dz * ez);
                            pol[i] = 0.5 * (1.0 + c2s - kahn * cos(2 * psi) * s2s);
                        }
                    } else {
                        for (int64_t i = a; i < b; ++i) {
                            double c2t = ix * dxa[i] + iy * dya[i] + iz * dza[i];
                            double c2s = c2t * c2t;
                            pol[i] = 0.5 * (1.0 + c2s);
                        }
                    }
                    for (int64_t i = a; i < b; ++i) {
                        double sign = Fb[i] < 0.0 ? -1.0 : 1.0;
                        Ib[i] += sign * Fb[i] * Fb[i] * pol[i] * om[i] * wn;
                    }
                }
            }
        }
        for (int64_t i = a; i < b; ++i)
            p->out[s * F + fb + i] = p->fmap ? (float)Fb[i] : (float)(Ib[i] * p->scale);
    }
}

static void *worker(void *arg)
{
    job_t *j = (job_t *)arg;
    for (;;) {
        int64_t s = atomic_fetch_add(&j->next, 1);
        if (s >= j->p->S) break;
        if (j->p->curved)
            render_row(j->p, j->bk, s);
        else
            render_row_blocks(j->p, j->bk, s);
    }
    return NULL;
}

/* the image (S, F) float32 into p->out, rows over nthreads threads */
int nb_amorphous_render(const nb_amorphous_params *p, int nthreads)
{
    pthread_t th[64];
    int started = 0;
    job_t j;
    buckets_t bk;
    buckets_init(&bk, p->knots, p->nk);
    j.p = p;
    j.bk = &bk;
    atomic_init(&j.next, 0);
    if (nthreads > 64) nthreads = 64;
    for (int t = 1; t < nthreads; ++t)
        if (pthread_create(&th[started], NULL, worker, &j) == 0) ++started;
    worker(&j);
    for (int t = 0; t < started; ++t) pthread_join(th[t], NULL);
    buckets_free(&bk);
    return 0;
}

/* nonBragg's statistics, SMV scaling and PGM of a float image over the ROI (x0..x1, y0..y1),
 * in the C's three passes; stats = max_I, mean, rms, rmsd, intfile_scale, pgm_scale */
void nb_amorphous_outputs(const float *img, int64_t S, int64_t F, int64_t x0, int64_t x1, int64_t y0, int64_t y1,
                          double iscale_in, double adc, double pscale_in, uint16_t *intimg, uint8_t *pgm,
                          double *stats)
{
    int64_t n = 0;
    double total = 0.0, sumsq = 0.0, max_I = 0.0;
    (void)S;
    for (int64_t s = y0; s <= y1; ++s)
        for (int64_t f = x0; f <= x1; ++f) {
            double v = (double)img[s * F + f];
            ++n;
            total += v;
            sumsq += v * v;
            if (v > max_I) max_I = v;
        }
    int64_t nn = n > 0 ? n : 1;
    double avg = total / (double)nn;
    double rms = sqrt(sumsq / (double)(nn > 1 ? nn - 1 : 1));
    double dev = 0.0;
    for (int64_t s = y0; s <= y1; ++s)
        for (int64_t f = x0; f <= x1; ++f) {
            double t = (double)img[s * F + f] - avg;
            dev += t * t;
        }
    double rmsd = sqrt(dev / (double)(nn > 1 ? nn - 1 : 1));
    double iscale = iscale_in;
    if (iscale <= 0.0) iscale = max_I > 0.0 ? 55000.0 / max_I : 1.0;
    double pscale = pscale_in;
    if (pscale <= 0.0) pscale = rmsd > 0.0 ? 250.0 / (5.0 * rmsd) : iscale;
    for (int64_t s = y0; s <= y1; ++s)
        for (int64_t f = x0; f <= x1; ++f) {
            double v = (double)img[s * F + f];
            double t = v * iscale + adc;
            if (t > 65535.0) t = 65535.0;
            if (t < 0.0) t = 0.0;
            intimg[s * F + f] = (uint16_t)floor((double)(float)(t + 0.5));
            double q = v * pscale;
            if (q > 255.0) q = 255.0;
            pgm[s * F + f] = (q > -2147483649.0 && q < 2147483648.0) ? (uint8_t)((int64_t)q & 0xFF) : 0;
        }
    stats[0] = max_I; stats[1] = avg; stats[2] = rms; stats[3] = rmsd; stats[4] = iscale; stats[5] = pscale;
}

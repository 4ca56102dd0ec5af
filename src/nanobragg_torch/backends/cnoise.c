/* The C generator's random images (ran1 / gaussdev / poidev / gammln of Numerical Recipes,
 * single-precision results) and noisify's pixel loops, for nonBragg's noise image and the
 * noisify program.  The draws (ran1_s: lcg_next, the shuffle table and ran1_u; gaussdev_s,
 * poidev_s, gammln) compute what the kernels in rng.py compute (_ran1_k, _gaussdev_k,
 * _poidev_k, _gammln_k): the same double arithmetic with the same explicit roundings to float,
 * so the images are identical.  Built without fast-math and without FMA contraction, which
 * would change those roundings (rs_derive alone allows contraction: its fast functions are
 * checked against libm, below).
 *
 * The draws are one serial stream (pixel after pixel, as the C programs).  What makes it cheap
 * without changing a bit of it (each gives the very values the serial code computes):
 *  - ran1's outputs are the seeds' LCG values, delayed by the shuffle table: a producer thread
 *    makes each seed's values ahead, in SIMD lanes, with what the draws compute from one output
 *    alone (ran1's float, tan(PI u) as float, two logs for poidev's acceptance test); the
 *    consumer keeps the shuffle table and decides poidev's test in logs where it is not
 *    within acc_eps of its boundary (exactly, with libm's exp, where it is);
 *  - the fast tan and log are checked lane by lane: where the float rounding of a fast value is
 *    not certain (round_sure_vd), libm's function gives it;
 *  - poidev's per-mean set-up (sqrt(2 xm), log xm, xm log xm - gammln(xm + 1)) depends on the
 *    pixel's mean only; where the means are known in advance (nonBragg's image, noisify without
 *    flicker or calibration error) the producer computes it ahead, in lanes, checked the same way;
 *  - gammln(em + 1) of the rejection loop takes integer em: a table filled on first use.
 * nb_lanes_check() measures the fast functions against libm (tests/test_companion_kernels.py,
 * scripts/check_fast_functions.py over every value ran1 can return).
 *
 * State (shared with rng.CRandom):
 *   ist: int64[2 + 32]  iy, iset, iv[32]
 *   fst: double[5]      gset, oldm, sq, alxm, g
 *   seed: int64[1]      the stream's seed variable, updated in place
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

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

int nb_noise_abi(void) { return 3; }

/* Numerical Recipes' gammln (Lanczos) before its rounding to float, with LOG for libm's log
 * (the scalar here; written to take lanes too, as STIRLING_SERIES below) */
#define GAMMLN_SERIES(xx, LOG, ONE)                                                               \
    {                                                                                             \
        __typeof__(xx) x = (xx), y = (xx), tmp = x + 5.5, ser = (ONE);                            \
        tmp -= (x + 0.5) * LOG(tmp);                                                              \
        y += 1.0; ser += 76.18009172947146 / y;                                                   \
        y += 1.0; ser += -86.50532032941677 / y;                                                  \
        y += 1.0; ser += 24.01409824083091 / y;                                                   \
        y += 1.0; ser += -1.231739572450155 / y;                                                  \
        y += 1.0; ser += 0.1208650973866179e-2 / y;                                               \
        y += 1.0; ser += -0.5395239384953e-5 / y;                                                 \
        return -tmp + LOG(2.5066282746310005 * ser / x);                                          \
    }

static double gammln_d(double xx) GAMMLN_SERIES(xx, log, 1.000000000190015)

static double gammln(double xx) { return f32(gammln_d(xx)); }

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

/* gammln(em + 1) for em = floorf(e), e >= 0: the table's value where em is in it, the table's
 * index from e itself (truncation is the floor), so the load does not wait for the floor (the
 * draw loop's critical path); other em computed */
static inline double gammln_floor1(float e, float em, const lg_table *t)
{
    if (e < (float)t->size) return (double)t->v[(int64_t)e];     /* (size <= 2^21: exact) */
    return gammln(f32((double)em + 1.0));
}


static double max_of(const float *a, int64_t n)
{
    float m = 0.0f;
    for (int64_t i = 0; i < n; ++i)
        if (a[i] > m) m = a[i];
    return (double)m;
}

/* gammln(x) rounded to float, for x >= 13: Stirling's series (one log) where its float is
 * certain, gammln where not.  Stirling's series is within 2e-10 of lnGamma, gammln (Lanczos) too,
 * and the two double evaluations round within a few ulp; tol holds both (scripts/
 * check_fast_functions.py compares every float mean's set-up with the plain one). */
#define STIRLING_SERIES(xx, LOG)                                                                  \
    {                                                                                             \
        __typeof__(xx) x = (xx), r = 1.0 / x, r2 = r * r;                                         \
        return (x - 0.5) * LOG(x) - x + 0.91893853320467274178 +                                  \
               r * (1.0 / 12.0 - r2 * (1.0 / 360.0 - r2 * (1.0 / 1260.0 - r2 * (1.0 / 1680.0)))); \
    }

static inline double stirling(double xx) STIRLING_SERIES(xx, log)

/* is the float of G certain when G is within tol of the value rounded? */
static inline int float_sure(double G, double tol)
{
    float f = (float)G;
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    int e = (int)((b >> 23) & 0xff);
    if (e <= 23 || e >= 255) return 0;
    uint64_t ub = (uint64_t)(e - 150 + 1023) << 52;     /* the float's ulp, 2^(e - 150) (normal) */
    double uf;
    memcpy(&uf, &ub, sizeof uf);
    double below = (b & 0x7fffff) ? 0.5 * uf : 0.25 * uf;   /* a power of two: the float below is closer */
    double d = G - (double)f;
    /* more than tol inside the midpoints with the floats next to f */
    return 0.5 * uf - d > tol && d + below > tol;
}

/* the tolerance for Stirling's series of value G, from |G| (scalar or lanes) */
#define STIRLING_TOL_ABS(aG) (4e-10 + 8.0 * 2.3e-16 * (aG))
#define STIRLING_TOL(G) STIRLING_TOL_ABS(fabs(G))

static inline double gammln_f32(double x)
{
    double G = stirling(x);
    if (float_sure(G, STIRLING_TOL(G))) return f32(G);
    return gammln(x);
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
    pre[2] = (float)(f32(xm * alxm) - gammln_f32(f32(xm + 1.0)));
}

/* ---- libm's results in SIMD lanes ----------------------------------------------------------
 * Fast log and tan in NL double lanes (the machine's vector width: 8 with AVX-512, 4 with AVX,
 * else 2); where a value is rounded to float next (as the C rounds them), round_sure_vd() tells
 * the lanes whose float is certain: the fast value is more than TOL double ulps from a rounding
 * midpoint, so libm's value (within its own error of the exact one) rounds to the same float.
 * The other lanes take libm's function. */
#if defined(__AVX512F__)
#define NL 8
#define A_NL 1457850878LL     /* 16807^NL mod (2^31 - 1): NL LCG steps at once */
#elif defined(__AVX__)
#define NL 4
#define A_NL 984943658LL
#else
#define NL 2
#define A_NL 282475249LL
#endif
/* with 2-double lanes the fast functions cost the producer more than the draws they would save:
 * there it makes the LCG values and u only, and the consumer calls libm's tan and exp as the C */
#define DERIVED (NL > 2)

int nb_noise_lanes(void) { return NL; }
typedef double vd __attribute__((vector_size(8 * NL)));
typedef int64_t vl __attribute__((vector_size(8 * NL)));
typedef uint64_t vu __attribute__((vector_size(8 * NL)));
typedef float vf __attribute__((vector_size(4 * NL)));

static inline vd vd_splat(double a) { return (vd){0} + a; }

/* int64 lanes with |k| < 2^51 as doubles, and doubles rounded to such integers, by the 1.5 2^52
 * trick (integer adds and float adds only: no int64 <-> double conversion, which AVX2 lacks) */
#define MAGIC 6755399441055744.0
#define MAGIC_BITS 0x4338000000000000LL
static inline vd i2d_vd(vl k)
{
    vl b = k + MAGIC_BITS;
    vd d;
    __builtin_memcpy(&d, &b, sizeof d);
    return d - MAGIC;
}

#define TOL 64                /* double ulps: a fast function's error and libm's, with room */

/* log of finite normal x > 0, absolute error < 4e-15 */
static inline vd log_vd(vd x)
{
    vl bits;
    __builtin_memcpy(&bits, &x, sizeof bits);
    vl ex = (vl)(((vu)bits >> 52) & 0x7ff) - 1023;
    vl mb = (bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL;
    vd m;
    __builtin_memcpy(&m, &mb, sizeof m);
    vl big = m > 1.4142135623730951;           /* m in [sqrt(1/2), sqrt(2)) */
    m = (vd)(((vl)(m * 0.5) & big) | ((vl)m & ~big));
    ex = ex - big;                               /* big is -1 where true */
    vd s = (m - 1.0) / (m + 1.0), s2 = s * s;
    vd p = vd_splat(1.0 / 19.0);
    p = p * s2 + 1.0 / 17.0;
    p = p * s2 + 1.0 / 15.0;
    p = p * s2 + 1.0 / 13.0;
    p = p * s2 + 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    return i2d_vd(ex) * 0.6931471805599453 + (2.0 * s + 2.0 * s * s2 * p);
}

/* the lanes whose rounding to float is certain (-1) when t is within TOL double ulps of libm's
 * value: t is more than TOL ulps from a rounding midpoint */
static inline vl round_sure_vd(vd t)
{
    vl b;
    __builtin_memcpy(&b, &t, sizeof b);
    vl d = (b & ((1LL << 29) - 1)) - (1LL << 28);   /* the bits float rounding drops, less half */
    vd at = (vd)((vl)t & 0x7fffffffffffffffLL);
    return ((d > TOL) | (d < -TOL)) & (at > 1e-30) & (at < 1e30);
}

static inline vd f32_vd(vd x) { return __builtin_convertvector(__builtin_convertvector(x, vf), vd); }

/* tan(x) for x in [0, 3.2]: within a few ulp of libm's (nb_lanes_check) */
static inline vd tan_vd(vd x)
{
    const double pio2_1 = 1.57079632673412561417e+00, pio2_2 = 6.07710050630396597660e-11,
                 pio2_3 = 2.02226624871116645580e-21, pio2_3t = 8.47842766036889956997e-32;
    /* x - n pi/2 in four parts (fdlibm's): x = fl(PI u) can lie within 1e-16 of pi/2 */
    vd t = x * 0.63661977236758134308 + MAGIC;      /* n = rint(x 2/pi), its parity in t's low bit */
    vd n = t - MAGIC;
    vd r = (((x - n * pio2_1) - n * pio2_2) - n * pio2_3) - n * pio2_3t;
    vd z = r * r;
    /* sin and cos of |r| <= pi/4 (fdlibm's kernel coefficients) */
    const double S1 = -1.66666666666666324348e-01, S2 = 8.33333333332248946124e-03,
                 S3 = -1.98412698298579493134e-04, S4 = 2.75573137070700676789e-06,
                 S5 = -2.50507602534068634195e-08, S6 = 1.58969099521155010221e-10;
    const double C1 = 4.16666666666666019037e-02, C2 = -1.38888888888741095749e-03,
                 C3 = 2.48015872894767294178e-05, C4 = -2.75573143513906633035e-07,
                 C5 = 2.08757232129817482790e-09, C6 = -1.13596475577881948265e-11;
    vd sn = r + r * z * (S1 + z * (S2 + z * (S3 + z * (S4 + z * (S5 + z * S6)))));
    vd cp = z * (C1 + z * (C2 + z * (C3 + z * (C4 + z * (C5 + z * C6)))));
    vd hz = 0.5 * z, w = 1.0 - hz;
    vd cs = w + (((1.0 - w) - hz) + z * cp);
    vl tb;
    __builtin_memcpy(&tb, &t, sizeof tb);
    vl odd = (tb & 1) != 0;
    vd num = (vd)(((vl)(-cs) & odd) | ((vl)sn & ~odd));
    vd den = (vd)(((vl)sn & odd) | ((vl)cs & ~odd));
    return num / den;
}

/* poidev's acceptance test is decided in logs where they differ by more than this (float
 * rounding of t is 6e-8 in log; the logs' errors 1e-14); nb_acc_eps() sets it (tests) */
static double acc_eps = 1e-6;

double nb_acc_eps(double v)
{
    double old = acc_eps;
    if (v >= 0.0) acc_eps = v;
    return old;
}

static inline int all_lanes(vl m)
{
    int64_t a = -1;
    for (int l = 0; l < NL; ++l) a &= m[l];
    return a != 0;
}

/* ---- the producer's bell ----------------------------------------------------------------------
 * The producer thread sleeps when everything it makes is made as far ahead as the rings hold; the
 * consumer rings the bell when a ring it reads is half empty (or when it has to wait, or at the
 * end).  A futex on Linux: a sleeping producer leaves its core to the other threads (the image
 * writers), where a yielding one keeps taking its turns.  Elsewhere the producer polls every
 * 20 us.  The producer sets `sleeping` and checks for work again before it waits, the consumer
 * publishes its progress and then takes `sleeping` (both seq_cst): one of them sees the other. */
typedef struct {
    _Atomic uint32_t word;    /* bumped at each ring: the futex word */
    _Atomic int sleeping;     /* the producer is (about to be) waiting */
} bell_t;

static void bell_ring(bell_t *b)
{
    atomic_fetch_add(&b->word, 1u);
#ifdef __linux__
    syscall(SYS_futex, &b->word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
#endif
}

/* after one thread's progress is published: wake the other if it sleeps (once a sleep) */
static inline void bell_poke(bell_t *b)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&b->sleeping, memory_order_relaxed) && atomic_exchange(&b->sleeping, 0))
        bell_ring(b);
}

/* sleep until the bell rings (its word moves from w) or ns pass; the caller set `sleeping` */
static void bell_wait(bell_t *b, uint32_t w, long ns)
{
#ifdef __linux__
    struct timespec ts = {0, ns};
    syscall(SYS_futex, &b->word, FUTEX_WAIT_PRIVATE, w, &ts, NULL, 0);
#else
    (void)w;
    struct timespec ts = {0, ns < 20000 ? ns : 20000};
    nanosleep(&ts, NULL);
#endif
    atomic_store(&b->sleeping, 0);
}

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* The draw loop's wait for the producer: until *ctr > q.  It rings the producer's bell (pbell),
 * spins a little, then sleeps on its own (cbell), which the producer rings after each block it
 * publishes.  Neither thread calls sched_yield: a yield can hand the core to an idle-priority
 * writer for a whole time slice, where a waking thread takes it back at once. */
static int64_t wait_past(_Atomic int64_t *ctr, int64_t q, bell_t *pbell, bell_t *cbell)
{
    int64_t v = atomic_load_explicit(ctr, memory_order_acquire);
    for (int spin = 0; v <= q; ++spin) {
        bell_poke(pbell);
        if (spin < 64) {
            CPU_RELAX();
        } else {
            uint32_t w = atomic_load(&cbell->word);
            atomic_store(&cbell->sleeping, 1);
            atomic_thread_fence(memory_order_seq_cst);
            if (atomic_load_explicit(ctr, memory_order_acquire) > q)
                atomic_store(&cbell->sleeping, 0);
            else
                bell_wait(cbell, w, 1000000);      /* (bounded: a missed ring costs 1 ms) */
        }
        v = atomic_load_explicit(ctr, memory_order_acquire);
    }
    return v;
}

/* ---- poidev's set-up ahead of the stream ----------------------------------------------------- */
#define PRE_BLOCK 256
#define PRE_RING 16384        /* set-ups held (a multiple of PRE_BLOCK): entry q at q % PRE_RING */

typedef struct {
    const float *means;       /* (n,) the means, in the order the stream draws them */
    int64_t n;
    float *pre;               /* (PRE_RING, 3) */
    _Atomic int64_t ready;    /* entries [0, ready) are done (published in order) */
    _Atomic int64_t claimed;  /* entries [0, claimed) are done or being made (a block at a time) */
    _Atomic int64_t used;     /* the consumer is past entries [0, used) */
    int64_t known;            /* consumer's copy of ready */
    int threaded;
    bell_t *bell, *cbell;     /* the producer's and the consumer's */
} pre_job;

/* Stirling's series in lanes (stirling() with log_vd for libm's log) */
static inline vd stirling_vd(vd xx) STIRLING_SERIES(xx, log_vd)

/* float_sure() in lanes (-1: certain); G finite */
static inline vl float_sure_vd(vd G, vd tol)
{
    vf f = __builtin_convertvector(G, vf);
    typedef int32_t vi __attribute__((vector_size(4 * NL)));
    vi fb;
    __builtin_memcpy(&fb, &f, sizeof fb);
    vl b = __builtin_convertvector(fb, vl) & 0xffffffffLL;
    vl e = (b >> 23) & 0xff;
    vl ub = (e - 150 + 1023) << 52;                    /* the float's ulp (where e is in range) */
    vd uf;
    __builtin_memcpy(&uf, &ub, sizeof uf);
    vd below = (vd)(((vl)(0.5 * uf) & ((b & 0x7fffff) != 0)) | ((vl)(0.25 * uf) & ((b & 0x7fffff) == 0)));
    vd d = G - __builtin_convertvector(f, vd);
    return (e > 23) & (e < 255) & (0.5 * uf - d > tol) & (d + below > tol);
}

/* poidev_setup of NL means in lanes (the lanes that are not certain, or not in the rejection
 * branch, by the scalar); returns how many lanes of the rejection branch took the scalar */
static int setup_vd(const float *means, float *pre)
{
    vf mf;
    __builtin_memcpy(&mf, means, sizeof mf);
    vd xm = __builtin_convertvector(mf, vd);
    vd alxm_d = log_vd(xm);
    vl ok = (xm >= 12.0) & (xm <= 1.0e6) & round_sure_vd(alxm_d);
    vd alxm = f32_vd(alxm_d);
    /* gammln(xm + 1) by Stirling's series where its float is certain (gammln_f32 in lanes; the
     * tolerance has log_vd's error, 4e-15 absolute, times x besides) */
    vd x1 = f32_vd(xm + 1.0);
    vd G_d = stirling_vd(x1);
    vd aG = (vd)((vl)G_d & 0x7fffffffffffffffLL);
    ok &= float_sure_vd(G_d, STIRLING_TOL_ABS(aG) + 4e-15 * x1);
    vd g = f32_vd(xm * alxm) - f32_vd(G_d);
    vd two = xm * 2.0;
    int scalar = 0;
    for (int l = 0; l < NL; ++l) {
        float *o = pre + 3 * l;
        if (ok[l]) {
            o[0] = (float)__builtin_sqrt(two[l]);      /* (lanes >= 24: no errno path) */
            o[1] = (float)alxm[l];
            o[2] = (float)g[l];
        } else {
            poidev_setup(xm[l], o);
            scalar += xm[l] >= 12.0 && xm[l] <= 1.0e6;
        }
    }
    return scalar;
}

/* entries [lo, hi) (one block: they do not wrap round the ring) */
static void pre_range(pre_job *job, int64_t lo, int64_t hi)
{
    int64_t q = lo;
    float *o = job->pre + 3 * (lo % PRE_RING) - 3 * lo;     /* o + 3 q: entry q's slot */
    if (DERIVED)
        for (; q + NL <= hi; q += NL) setup_vd(job->means + q, o + 3 * q);
    for (; q < hi; ++q)
        poidev_setup(f32((double)job->means[q]), o + 3 * q);
}

/* The set-up of entry q.  With the producer thread: the blocks it made, and where it has not made
 * the next one (it makes the streams' blocks first), the consumer claims that block and makes it
 * itself, so the two threads share the work as their loads allow (the producer's core is shared
 * with the image writers).  Without it: a block at a time here. */
static inline const float *pre_get(pre_job *c, int64_t q)
{
    if (!c->pre) return NULL;
    if (q >= c->known) {
        if (c->threaded) {
            atomic_store_explicit(&c->used, q, memory_order_release);
            int64_t ready = atomic_load_explicit(&c->ready, memory_order_acquire);
            if (ready - q <= PRE_RING / 2) bell_poke(c->bell);
            if (ready <= q) {                           /* ready == q: a block's start */
                int64_t cl = q, hi = q + PRE_BLOCK < c->n ? q + PRE_BLOCK : c->n;
                if (atomic_compare_exchange_strong(&c->claimed, &cl, hi)) {
                    pre_range(c, q, hi);
                    atomic_store_explicit(&c->ready, hi, memory_order_release);
                    ready = hi;
                } else {
                    /* the producer is making it: a block's work */
                    ready = wait_past(&c->ready, q, c->bell, c->cbell);
                }
            }
            /* back here after a block at most, to tell the producer what was used */
            c->known = ready < q + PRE_BLOCK ? ready : q + PRE_BLOCK;
        } else {
            int64_t hi = q + PRE_BLOCK < c->n ? q + PRE_BLOCK : c->n;
            pre_range(c, q, hi);
            c->known = hi;
        }
    }
    return c->pre + 3 * (q % PRE_RING);
}

/* ---- the stream and what the draws compute from one output ------------------------------------
 * ran1's outputs are values of the seeds' LCG sequences, delayed by the shuffle table, and each
 * seed's sequence does not depend on how it is drawn.  So a producer thread makes each seed's
 * sequence ahead, in blocks, with what the draws compute from one output alone, in SIMD lanes:
 *   u = ran1's float,  y = (float)tan(PI u),  c = log(0.9 (1 + y y)),  L = log(u).
 * y must be libm's to the bit: a fast tan, and libm's tan where the float rounding of the fast
 * value is not certain (round_sure_vd).  c and L serve poidev's acceptance test (u > t,
 * t = (float)(0.9 (1 + y y) exp(lnratio))), decided in logs (L against c + lnratio) where the
 * two differ by more than acc_eps, exactly (libm's exp) where they do not.  The consumer keeps
 * the shuffle table, with these values in its entries. */

static inline int64_t lcg_next(int64_t idum)
{
    int64_t k = idum / IQ;
    idum = IA * (idum - k * IQ) - IR * k;
    if (idum < 0) idum += IM;
    return idum;
}

static inline double ran1_u(int64_t v)
{
    double temp = f32(AM * (double)v);
    return temp > RNMX ? f32(RNMX) : temp;
}

typedef struct {
    int64_t v;                /* the LCG value (ran1's iy) */
    float u, y;
    double c, L;
} rv;

static void rv_make(int64_t v, rv *e)
{
    double u = ran1_u(v);
    e->v = v;
    e->u = (float)u;
    e->y = (float)tan(PI * u);
    e->c = log(0.9 * (1.0 + (double)(e->y * e->y)));
    e->L = log(u);
}

#define RB 256                /* entries made at once */
#define RING 16384            /* entries a stream holds (a multiple of RB): ~0.2 ms of draws */

typedef struct {
    rv e[RING];
    _Atomic int64_t made;     /* entries [0, made) are ready (counted from the stream's start) */
    _Atomic int64_t taken;    /* the consumer has read entries [0, taken) */
    _Atomic int64_t start;    /* the LCG value before entry 0, -1 until the consumer sets it */
    vl lanes;                 /* producer: the LCG values of the next NL entries */
    int begun;                /* producer: lanes set */
    int64_t cur;              /* consumer: the seed variable */
    int64_t pos, known;       /* consumer: entries read, and its copy of made */
} rstream;

typedef struct {
    rv tab[NTAB];
    int64_t iy;               /* ran1's iy: the last output's LCG value */
} shuffle_t;

/* the derived values of NL LCG values, stored at e (fast tan and logs: FMA contraction
 * allowed here, the exact parts have no multiply-add) */
__attribute__((optimize("fp-contract=fast"))) static inline void rs_derive(rv *e, vl lane)
{
    vd u = __builtin_convertvector(
        __builtin_convertvector(AM * i2d_vd(lane), vf), vd);
    vl over = u > RNMX;
    u = (vd)(((vl)u & ~over) | ((vl)vd_splat(f32(RNMX)) & over));
    if (!DERIVED) {
        for (int l = 0; l < NL; ++l) {
            e[l].v = lane[l];
            e[l].u = (float)u[l];
        }
        return;
    }
    vd x = PI * u, t = tan_vd(x);
    vl sure = round_sure_vd(t);
    if (!all_lanes(sure))
        for (int l = 0; l < NL; ++l)
            if (!sure[l]) t[l] = tan(x[l]);
    vf yf = __builtin_convertvector(t, vf);
    vd yy = __builtin_convertvector(yf * yf, vd);
    vd c = log_vd(0.9 * (1.0 + yy)), L = log_vd(u);
#if (defined(__clang__) || __GNUC__ >= 12) && NL == 8
    /* the 8 entries {v, u, y, c, L} (4 qwords each): a 4 x 8 qword transpose in two shuffles */
    typedef float v16fs __attribute__((vector_size(64)));
    v16fs uy = __builtin_shufflevector(__builtin_convertvector(u, vf), yf, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5,
                                       13, 6, 14, 7, 15);
    vl q1 = (vl)uy, q2 = (vl)c, q3 = (vl)L;
    vl a = __builtin_shufflevector(lane, q1, 0, 8, 1, 9, 2, 10, 3, 11);
    vl b = __builtin_shufflevector(lane, q1, 4, 12, 5, 13, 6, 14, 7, 15);
    vl cc = __builtin_shufflevector(q2, q3, 0, 8, 1, 9, 2, 10, 3, 11);
    vl d = __builtin_shufflevector(q2, q3, 4, 12, 5, 13, 6, 14, 7, 15);
    vl o0 = __builtin_shufflevector(a, cc, 0, 1, 8, 9, 2, 3, 10, 11);
    vl o1 = __builtin_shufflevector(a, cc, 4, 5, 12, 13, 6, 7, 14, 15);
    vl o2 = __builtin_shufflevector(b, d, 0, 1, 8, 9, 2, 3, 10, 11);
    vl o3 = __builtin_shufflevector(b, d, 4, 5, 12, 13, 6, 7, 14, 15);
    _Static_assert(sizeof(rv) == 32, "rv: four qwords");
    __builtin_memcpy(e, &o0, sizeof o0);
    __builtin_memcpy(e + 2, &o1, sizeof o1);
    __builtin_memcpy(e + 4, &o2, sizeof o2);
    __builtin_memcpy(e + 6, &o3, sizeof o3);
#elif (defined(__clang__) || __GNUC__ >= 12) && NL == 4
    /* the 4 entries: a 4 x 4 qword transpose */
    typedef float v8fs __attribute__((vector_size(32)));
    v8fs uy = __builtin_shufflevector(__builtin_convertvector(u, vf), yf, 0, 4, 1, 5, 2, 6, 3, 7);
    vl q1 = (vl)uy, q2 = (vl)c, q3 = (vl)L;
    vl a = __builtin_shufflevector(lane, q1, 0, 4, 1, 5);
    vl b = __builtin_shufflevector(lane, q1, 2, 6, 3, 7);
    vl cc = __builtin_shufflevector(q2, q3, 0, 4, 1, 5);
    vl d = __builtin_shufflevector(q2, q3, 2, 6, 3, 7);
    vl o0 = __builtin_shufflevector(a, cc, 0, 1, 4, 5);
    vl o1 = __builtin_shufflevector(a, cc, 2, 3, 6, 7);
    vl o2 = __builtin_shufflevector(b, d, 0, 1, 4, 5);
    vl o3 = __builtin_shufflevector(b, d, 2, 3, 6, 7);
    _Static_assert(sizeof(rv) == 32, "rv: four qwords");
    __builtin_memcpy(e, &o0, sizeof o0);
    __builtin_memcpy(e + 1, &o1, sizeof o1);
    __builtin_memcpy(e + 2, &o2, sizeof o2);
    __builtin_memcpy(e + 3, &o3, sizeof o3);
#else
    for (int l = 0; l < NL; ++l) {
        e[l].v = lane[l];
        e[l].u = (float)u[l];
        e[l].y = yf[l];
        e[l].c = c[l];
        e[l].L = L[l];
    }
#endif
}

static inline vl lcg_jump(vl lane)
{
    vl p = lane * A_NL;                                /* < 2^62; mod 2^31 - 1 below */
    vl r = (p & IM) + (vl)((vu)p >> 31);
    return r - (IM & (r >= IM));
}

/* the producer's block: entries [m, m + RB) of s */
static void rs_fill(rstream *s, int64_t m)
{
    if (!s->begun) {
        int64_t v = atomic_load_explicit(&s->start, memory_order_acquire);
        for (int l = 0; l < NL; ++l) {
            v = lcg_next(v);
            s->lanes[l] = v;
        }
        s->begun = 1;
    }
    rv *e = s->e + m % RING;
    vl lane = s->lanes;
    for (int i = 0; i < RB; i += 2 * NL) {
        vl l2 = lcg_jump(lane);
        rs_derive(e + i, lane);
        rs_derive(e + i + NL, l2);
        lane = lcg_jump(l2);
    }
    s->lanes = lane;
}

/* ---- the producer thread: the streams' blocks and poidev's set-up ---------------------------- */
typedef struct {
    rstream *s[2];
    int ns;
    pre_job *pre;
    int (*follow)(void *);    /* work behind the consumer (one step; 0: nothing to do now), or NULL */
    void *follow_ctx;
    _Atomic int stop;
    bell_t *bell, *cbell;     /* the producer's and the consumer's (rung through a const producer) */
    bell_t bell_, cbell_;
    pthread_t thread;
    int threaded;
} producer;

static int rs_want(rstream *s)
{
    if (atomic_load_explicit(&s->start, memory_order_acquire) < 0) return 0;
    int64_t m = atomic_load_explicit(&s->made, memory_order_relaxed);
    return m + RB - atomic_load_explicit(&s->taken, memory_order_acquire) <= RING;
}

/* the start of the next set-up block to make (*lo), if there is one and the ring has room for it */
static int pre_want(pre_job *j, int64_t *lo)
{
    if (!j || !j->pre) return 0;
    *lo = atomic_load_explicit(&j->claimed, memory_order_acquire);
    return *lo < j->n && *lo + PRE_BLOCK - atomic_load_explicit(&j->used, memory_order_acquire) <= PRE_RING;
}

/* anything the producer could do now (without doing it; the follow step is tried in the loop) */
static int producer_has_work(producer *P)
{
    for (int k = 0; k < P->ns; ++k)
        if (rs_want(P->s[k])) return 1;
    int64_t lo;
    if (pre_want(P->pre, &lo)) return 1;
    return atomic_load_explicit(&P->stop, memory_order_relaxed);
}

static void producer_sleep(producer *P)
{
    bell_t *b = P->bell;
    uint32_t w = atomic_load(&b->word);
    atomic_store(&b->sleeping, 1);
    atomic_thread_fence(memory_order_seq_cst);
    if (producer_has_work(P) || (P->follow && P->follow(P->follow_ctx))) {
        atomic_store(&b->sleeping, 0);
        return;
    }
    bell_wait(b, w, 2000000);       /* (bounded: a missed ring would cost 2 ms, never a hang) */
}

static void *producer_main(void *arg)
{
    producer *P = (producer *)arg;
    int idle = 0;
#ifdef __linux__
    prctl(PR_SET_TIMERSLACK, 5000UL, 0UL, 0UL, 0UL);
#endif
    while (!atomic_load_explicit(&P->stop, memory_order_relaxed)) {
        int did = 0;
        for (int k = 0; k < P->ns; ++k) {
            rstream *s = P->s[k];
            if (rs_want(s)) {
                int64_t m = atomic_load_explicit(&s->made, memory_order_relaxed);
                rs_fill(s, m);
                atomic_store_explicit(&s->made, m + RB, memory_order_release);
                bell_poke(P->cbell);
                did = 1;
            }
        }
        pre_job *j = P->pre;
        int64_t lo;
        if (!did && pre_want(j, &lo)) {
            /* the set-ups when the streams are full (the consumer makes a block it finds missing) */
            int64_t hi = lo + PRE_BLOCK < j->n ? lo + PRE_BLOCK : j->n;
            if (atomic_compare_exchange_strong(&j->claimed, &lo, hi)) {
                pre_range(j, lo, hi);
                /* in order: the block before it may be the consumer's, still being made */
                while (atomic_load_explicit(&j->ready, memory_order_acquire) != lo) CPU_RELAX();
                atomic_store_explicit(&j->ready, hi, memory_order_release);
                bell_poke(P->cbell);
            }
            did = 1;
        }
        if (!did && P->follow) did = P->follow(P->follow_ctx);
        if (did) {
            idle = 0;
        } else if (++idle < 32) {
            CPU_RELAX();
        } else {
            /* everything made ahead: sleep until the consumer has read half a ring */
            producer_sleep(P);
            idle = 0;
        }
    }
    return NULL;
}

static rstream *rs_open(int64_t seed)
{
    rstream *s = (rstream *)aligned_alloc(64, (sizeof(rstream) + 63) / 64 * 64);
    if (!s) return NULL;
    atomic_init(&s->made, 0);
    atomic_init(&s->taken, 0);
    atomic_init(&s->start, -1);
    s->begun = 0;
    s->cur = seed;
    s->pos = s->known = 0;
    return s;
}

/* start the producer over streams (and the set-up job, or NULL); one thread only when asked */
static void producer_start(producer *P, rstream **s, int ns, pre_job *pre, int (*follow)(void *),
                           void *follow_ctx, int nthreads)
{
    memset(P, 0, sizeof(*P));
    for (int k = 0; k < ns; ++k) P->s[k] = s[k];
    P->ns = ns;
    P->pre = pre;
    P->follow = follow;
    P->follow_ctx = follow_ctx;
    atomic_init(&P->stop, 0);
    P->bell = &P->bell_;
    P->cbell = &P->cbell_;
    atomic_init(&P->bell_.word, 0u);
    atomic_init(&P->bell_.sleeping, 0);
    atomic_init(&P->cbell_.word, 0u);
    atomic_init(&P->cbell_.sleeping, 0);
    if (pre) {
        pre->bell = P->bell;
        pre->cbell = P->cbell;
    }
    if (nthreads > 1)
        P->threaded = pthread_create(&P->thread, NULL, producer_main, P) == 0;
    if (pre) pre->threaded = P->threaded && pre->pre != NULL;
}

static void producer_finish(producer *P)
{
    if (P->threaded) {
        atomic_store(&P->stop, 1);
        bell_ring(P->bell);
        pthread_join(P->thread, NULL);
    }
}

/* the seed variable after the consumer's draws (the last LCG value taken) */
static int64_t rs_seed(const rstream *s)
{
    return s->pos ? s->e[(s->pos - 1) & (RING - 1)].v : s->cur;
}

static void shuffle_open(shuffle_t *sh, const int64_t *ist)
{
    sh->iy = ist[I_IY];
    for (int j = 0; j < NTAB; ++j) rv_make(ist[I_IV + j], &sh->tab[j]);
}

static void shuffle_close(const shuffle_t *sh, int64_t *ist)
{
    ist[I_IY] = sh->iy;
    for (int j = 0; j < NTAB; ++j) ist[I_IV + j] = sh->tab[j].v;
}

/* the stream's next block (and on its first draw, ran1's reload of the table, as the C: a seed
 * <= 0, or no table yet) */
__attribute__((noinline)) static void ran1_more(shuffle_t *sh, rstream *s, const producer *P)
{
    if (s->pos == 0 && atomic_load_explicit(&s->start, memory_order_relaxed) < 0) {
        if (s->cur <= 0 || sh->iy == 0) {
            int64_t idum = (-s->cur < 1) ? 1 : -s->cur;
            for (int j = NTAB + 7; j >= 0; --j) {
                idum = lcg_next(idum);
                if (j < NTAB) rv_make(idum, &sh->tab[j]);
            }
            sh->iy = sh->tab[0].v;
            s->cur = idum;
        }
        atomic_store_explicit(&s->start, s->cur, memory_order_release);
    }
    if (s->pos) atomic_store_explicit(&s->taken, s->pos, memory_order_release);
    if (P->threaded) {
        int64_t made = atomic_load_explicit(&s->made, memory_order_acquire);
        if (made - s->pos <= RING / 2) bell_poke(P->bell);
        if (made == s->pos) made = wait_past(&s->made, s->pos, P->bell, P->cbell);
        /* back here after a block at most, to tell the producer what was taken */
        s->known = made < s->pos + RB ? made : s->pos + RB;
    } else {
        rs_fill(s, s->pos);
        s->known = s->pos + RB;
        atomic_store_explicit(&s->made, s->known, memory_order_relaxed);
    }
}

/* ran1 on seed stream s: its output, with the derived values */
static inline rv ran1_s(shuffle_t *sh, rstream *s, const producer *P)
{
    if (__builtin_expect(s->pos == s->known, 0)) ran1_more(sh, s, P);
    const rv *e = s->e + (s->pos & (RING - 1));
    int j = (int)((uint64_t)sh->iy >> 26);         /* iy / NDIV, NDIV = 2^26 */
    rv out = sh->tab[j];
    sh->tab[j] = *e;
    sh->iy = out.v;
    s->pos++;
    return out;
}

static double gaussdev_s(shuffle_t *sh, rstream *s, const producer *P, int64_t *ist, double *fst)
{
    double v1, v2, rsq, fac;
    if (ist[I_ISET] == 0) {
        do {
            v1 = f32(2.0 * (double)ran1_s(sh, s, P).u - 1.0);
            v2 = f32(2.0 * (double)ran1_s(sh, s, P).u - 1.0);
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

/* poidev on stream s, with an optional precomputed set-up (pre, or NULL) and gammln table.
 * The float-typed arithmetic below is the C's float arithmetic (rng.py evaluates it in double
 * and rounds each result to float, which gives the same floats). */
static inline __attribute__((always_inline)) double poidev_s(double xm_in, shuffle_t *sh, rstream *s, const producer *P, int64_t *ist, double *fst,
                       const float *pre, const lg_table *lgt)
{
    double xm = f32(xm_in);
    if (xm > 1.0e6)
        return f32(xm + sqrt(xm) * gaussdev_s(sh, s, P, ist, fst));
    if (xm != fst[F_OLDM]) {
        /* the set-up of a new mean (the C keeps the last one's), made here without pre */
        float own[3];
        if (!pre) {
            poidev_setup(xm, own);
            pre = own;
        }
        fst[F_OLDM] = xm;
        if (!(xm < 12.0)) {                       /* (NaN too: the rejection branch, as the C) */
            fst[F_SQ] = pre[0];
            fst[F_ALXM] = pre[1];
        }
        fst[F_G] = pre[2];
    }
    if (xm < 12.0) {
        float g = (float)fst[F_G], t = 1.0f;
        double em = -1.0;
        do {
            em += 1.0;
            t = t * ran1_s(sh, s, P).u;
        } while (t > g);
        return em;
    }
    const float sq = (float)fst[F_SQ], alxm = (float)fst[F_ALXM], g = (float)fst[F_G], xmf = (float)xm;
    for (;;) {
        float em, y;
        double c;
        do {
            rv e = ran1_s(sh, s, P);
            y = DERIVED ? e.y : (float)tan(PI * (double)e.u);
            c = e.c;
            em = sq * y + xmf;
        } while (em < 0.0f);
        float e0 = em;
        em = floorf(em);
        float lnratio = (em * alxm - (float)gammln_floor1(e0, em, lgt)) - g;
        rv a = ran1_s(sh, s, P);
        if (DERIVED) {
            double d = a.L - (c + (double)lnratio);
            if (d < -acc_eps) return (double)em;          /* u < t */
            if (d > acc_eps) continue;                    /* u > t */
        }
        float t = (float)(0.9 * (1.0 + (double)(y * y)) * exp((double)lnratio));
        if (!(a.u > t)) return (double)em;
    }
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

/* ---- checks of the fast functions against libm ------------------------------------------------
 * which 0: ran1's outputs of the LCG values [v0, v0 + count) (1 <= v < 2^31 - 1): the number of
 *   y that differ from (float)tan(PI u); stat[0] the largest difference of tan_vd from libm's tan
 *   in double ulps, stat[1] the lanes that took libm's tan, stat[2] and stat[3] the largest
 *   absolute errors of c and L (with 2-double lanes only u is made ahead: the others are 0);
 * which 1: poidev's set-up of the floats whose bit patterns are [v0, v0 + count): the number of
 *   set-ups in lanes that differ from the scalar's (whose gammln is gammln_f32: which 2 checks
 *   that against gammln); stat[1] the lanes that took the scalar;
 * which 2: gammln_f32 (Stirling's series) of those floats x in [12, 1e6], at f32(x + 1): the
 *   number that differ from gammln's; stat[0] the largest |series - gammln| before rounding,
 *   stat[1] the ones that took gammln.
 * Returns -1 for a bad request. */
int64_t nb_lanes_check(int which, int64_t v0, int64_t count, double *stat)
{
    int64_t bad = 0;
    stat[0] = stat[1] = stat[2] = stat[3] = 0.0;
    if (count < 0) return -1;
    if (which == 0) {
        if (v0 < 1 || v0 + count > IM) return -1;
        rv e[NL];
        for (int64_t v = v0; v < v0 + count; v += NL) {
            vl lane;
            for (int l = 0; l < NL; ++l) lane[l] = v + l < v0 + count ? v + l : v0;
            rs_derive(e, lane);
            vd u, x;
            for (int l = 0; l < NL; ++l) {
                u[l] = ran1_u(lane[l]);
                x[l] = PI * u[l];
            }
            vd t = tan_vd(x);
            vl sure = round_sure_vd(t);
            for (int l = 0; l < NL; ++l) {
                double ref = tan(x[l]);
                float yref = (float)ref;
                /* (2-double lanes: only u is made ahead) */
                if ((DERIVED && memcmp(&yref, &e[l].y, sizeof yref) != 0) || (float)u[l] != e[l].u) ++bad;
                double ulp = fabs(nextafter(ref, INFINITY) - ref);
                double du = fabs(t[l] - ref) / ulp;
                if (du > stat[0]) stat[0] = du;
                stat[1] += !sure[l];
                double dc = DERIVED ? fabs(e[l].c - log(0.9 * (1.0 + (double)(yref * yref)))) : 0.0;
                double dl = DERIVED ? fabs(e[l].L - log(u[l])) : 0.0;
                if (dc > stat[2]) stat[2] = dc;
                if (dl > stat[3]) stat[3] = dl;
            }
        }
        return bad;
    }
    if (which == 2) {
        if (v0 < 0 || v0 + count > 0x7f800000LL) return -1;
        for (int64_t b = v0; b < v0 + count; ++b) {
            uint32_t bits = (uint32_t)b;
            float m;
            memcpy(&m, &bits, sizeof m);
            double xm = (double)m;
            if (!(xm >= 12.0 && xm <= 1.0e6)) continue;
            double x = f32(xm + 1.0), G = gammln_f32(x), ref = gammln(x);
            if (G != ref) ++bad;
            double S = stirling(x);
            stat[1] += !float_sure(S, STIRLING_TOL(S));
            double dd = fabs(S - gammln_d(x));
            if (dd > stat[0]) stat[0] = dd;
        }
        return bad;
    }
    if (which == 1) {
        if (v0 < 0 || v0 + count > 0x7f800000LL) return -1;
        for (int64_t b = v0; b < v0 + count; b += NL) {
            float m[NL], fast[3 * NL], ref[3 * NL];
            for (int l = 0; l < NL; ++l) {
                uint32_t bits = (uint32_t)(b + l < v0 + count ? b + l : v0);
                memcpy(m + l, &bits, sizeof bits);
            }
            stat[1] += setup_vd(m, fast);
            for (int l = 0; l < NL; ++l) {
                float *r = ref + 3 * l;
                r[0] = r[1] = r[2] = 0.0f;
                poidev_setup((double)m[l], r);
                float *f = fast + 3 * l;
                int scalar = !((double)m[l] >= 12.0 && (double)m[l] <= 1.0e6);
                if (scalar) memcpy(f, r, sizeof(float) * 3);       /* not the lanes' branch */
                if (memcmp(f, r, sizeof(float) * 3) != 0) ++bad;
            }
        }
        return bad;
    }
    return -1;
}

/* ---- a draw loop's state ------------------------------------------------------------------- */
/* the seeds' streams (the seed, and the calibration seed or none), the shuffle table, the set-ups
 * of means known ahead, the gammln table and the producer thread */
typedef struct {
    rstream *rs[2];
    int64_t *seed[2];         /* the seed variables, written back by draws_close */
    pre_job pj;
    lg_table lgt;
    shuffle_t sh;
    producer P;
} draws;

/* ns seeds; means (n of them, or NULL) for the set-ups ahead; max_mean for the gammln table;
 * follow (or NULL): work behind the loop.  0 when memory runs out (nothing to close). */
static int draws_open(draws *D, int64_t **seeds, int ns, int64_t *ist, const float *means, int64_t n,
                      double max_mean, int (*follow)(void *), void *follow_ctx, int nthreads)
{
    memset(D, 0, sizeof(*D));
    atomic_init(&D->pj.ready, 0);
    atomic_init(&D->pj.claimed, 0);
    atomic_init(&D->pj.used, 0);
    for (int k = 0; k < ns; ++k) {
        D->seed[k] = seeds[k];
        D->rs[k] = rs_open(seeds[k][0]);
        if (!D->rs[k]) {
            free(D->rs[0]);
            return 0;
        }
    }
    if (means && n > 0) {
        D->pj.means = means;
        D->pj.n = n;
        D->pj.pre = (float *)malloc(sizeof(float) * 3 * PRE_RING);   /* (none: set-ups made per draw) */
    }
    lgt_init(&D->lgt, max_mean);
    shuffle_open(&D->sh, ist);
    producer_start(&D->P, D->rs, ns, means ? &D->pj : NULL, follow, follow_ctx, nthreads);
    return 1;
}

static void draws_close(draws *D, int64_t *ist)
{
    producer_finish(&D->P);
    shuffle_close(&D->sh, ist);
    for (int k = 0; k < 2; ++k)
        if (D->rs[k]) {
            D->seed[k][0] = rs_seed(D->rs[k]);
            free(D->rs[k]);
        }
    free(D->pj.pre);
    free(D->lgt.v);
}

/* ---- nonBragg's noise image ------------------------------------------------------------- */
/* img: float32 (nslow, nfast); out: uint16 (nslow, nfast), pixels outside the ROI untouched.
 * Returns the photon sum; *overloads counts pixels clipped at 65535; -1 when memory runs out
 * (nothing drawn). */
double nb_noise(const float *img, int64_t nslow, int64_t nfast, int64_t xmin, int64_t xmax,
                int64_t ymin, int64_t ymax, double adc, int64_t *ist, double *fst, int64_t *seed,
                uint16_t *out, int64_t *overloads, int nthreads)
{
    double photons = 0.0, value;
    int64_t s, f, over = 0;
    int64_t f0 = xmin > 0 ? xmin : 0, f1 = xmax < nfast - 1 ? xmax : nfast - 1;
    int64_t s0 = ymin > 0 ? ymin : 0, s1 = ymax < nslow - 1 ? ymax : nslow - 1;
    int64_t w = f1 - f0 + 1, h = s1 - s0 + 1, q = 0;
    *overloads = 0;
    if (w <= 0 || h <= 0) return 0.0;
    /* the means in the order they are drawn: the rows themselves, or the ROI's part copied */
    const float *means = img + s0 * nfast;
    float *copy = NULL;
    if (f0 != 0 || w != nfast) {
        means = copy = (float *)malloc(sizeof(float) * (size_t)(w * h));
        if (copy)
            for (s = s0; s <= s1; ++s)
                memcpy(copy + (s - s0) * w, img + s * nfast + f0, sizeof(float) * (size_t)w);
    }
    double max_mean = 0.0;
    for (s = s0; s <= s1; ++s) {
        double m = max_of(img + s * nfast + f0, w);
        if (m > max_mean) max_mean = m;
    }
    draws D;
    if (!draws_open(&D, &seed, 1, ist, means, w * h, max_mean, NULL, NULL, nthreads)) {
        free(copy);
        return -1.0;
    }
    for (s = s0; s <= s1; ++s) {
        for (f = f0; f <= f1; ++f, ++q) {
            value = poidev_s((double)img[s * nfast + f], &D.sh, D.rs[0], &D.P, ist, fst, pre_get(&D.pj, q), &D.lgt);
            photons += value;
            value += adc;
            if (value > 65535.0) {
                value = 65535.0;
                ++over;
            }
            out[s * nfast + f] = to_ushort(value);
        }
    }
    draws_close(&D, ist);
    free(copy);
    *overloads = over;
    return photons;
}

/* ---- noisify ---------------------------------------------------------------------------- */
/* the pixel loop of nb_photon_noise; psf (or NULL): noisify's PSF of the counts, made row by row
 * on the producer thread behind the loop (psf_follow_step) */
typedef struct psf_follow psf_follow;
static int psf_follow_step(void *ctx);
static void psf_follow_rows(psf_follow *F, int64_t rows);

static double photon_noise_impl(const float *photons, int64_t n, double flicker, double calib, int64_t *ist,
                                double *fst, int64_t *seed, int64_t *cseed, float *counts, int nthreads,
                                psf_follow *psf, int64_t nx)
{
    double total = 0.0, p0, v;
    int known = !(flicker > 0.0) && !(calib > 0.0);    /* the means are the photons themselves */
    int64_t *seeds[2] = {seed, cseed};
    /* flicker and calibration scale the means by 1 + rms z (|z| < 7 in practice) */
    double max_mean = max_of(photons, n) * (1.0 + 7.0 * ((flicker > 0.0 ? flicker : 0.0) + (calib > 0.0 ? calib : 0.0)));
    draws D;
    if (!draws_open(&D, seeds, calib > 0.0 ? 2 : 1, ist, known ? photons : NULL, n, max_mean,
                    psf ? psf_follow_step : NULL, psf, nthreads))
        return -1.0;
    const float *pre = NULL;
    /* With calibration error only, every second pixel's mean is known a pixel early: its
     * calibration is the gaussdev pair's cached half.  Its set-up is made then, before the draws
     * of the pixel before it, whose mispredicted branches no longer hold it up (unless that
     * pixel's mean is above 1e6: its draw takes the cached half). */
    int ahead = !(flicker > 0.0) && calib > 0.0;
    float buf[2][3];
    int next = -1;                                      /* buf[next]: this pixel's set-up, made ahead */
    int64_t col = 0, row = 0;
    for (int64_t i = 0; i < n; ++i) {
        p0 = (double)photons[i];
        if (flicker > 0.0) p0 *= 1.0 + flicker * gaussdev_s(&D.sh, D.rs[0], &D.P, ist, fst);
        if (calib > 0.0) p0 *= 1.0 + calib * gaussdev_s(&D.sh, D.rs[1], &D.P, ist, fst);
        if (known) {
            pre = pre_get(&D.pj, i);
        } else if (ahead) {
            pre = next >= 0 ? buf[next] : NULL;
            next = -1;
            if (ist[I_ISET] && i + 1 < n && f32(p0) <= 1.0e6) {
                int k = pre == buf[0];
                poidev_setup(f32((double)photons[i + 1] * (1.0 + calib * fst[F_GSET])), buf[k]);
                next = k;
            }
        }
        v = poidev_s(p0, &D.sh, D.rs[0], &D.P, ist, fst, pre, &D.lgt);
        counts[i] = (float)v;
        total += f32(v);
        if (psf && ++col == nx) {
            col = 0;
            psf_follow_rows(psf, ++row);
        }
    }
    draws_close(&D, ist);
    return total;
}

/* flicker, calibration and Poisson draws per pixel in raster order (noisify's noise loop);
 * counts: float32 photon counts; returns the photon sum (of the float counts), -1 when memory
 * runs out (nothing drawn) */
double nb_photon_noise(const float *photons, int64_t n, double flicker, double calib, int64_t *ist,
                       double *fst, int64_t *seed, int64_t *cseed, float *counts, int nthreads)
{
    return photon_noise_impl(photons, n, flicker, calib, ist, fst, seed, cseed, counts, nthreads, NULL, 1);
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
    draws D;
    /* the read-out noise's draws: the seed's stream, made as the draws need it (no thread) */
    int noisy = readout > 0.0;
    if (noisy && !draws_open(&D, &seed, 1, ist, NULL, 0, 0.0, NULL, NULL, 1)) return -1.0;
    for (int64_t i = 0; i < n; ++i) {
        double p = (double)counts[i];
        total += p;
        double adu = p * gain + adc;
        if (noisy) adu += readout * gaussdev_s(&D.sh, D.rs[0], &D.P, ist, fst);
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
    if (noisy) draws_close(&D, ist);
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
    int32_t *rowmax;          /* the largest radius of each row's sources (-1: none) */
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

/* row y's radii (and its largest), and its lost photons into lost (the row's nx values) */
static void psf_radius_row(psf_job *j, int64_t y, double *lost)
{
    const int64_t i0 = y * j->nx;
    for (int64_t x = 0; x < j->nx; ++x) {
        const int64_t i = i0 + x;
        double v = (double)j->img[i];
        if (!(v > 0.0)) {
            j->radius[i] = -1;
            lost[x] = 0.0;
        } else if (v < (double)j->tab_size && v == (double)(int64_t)v) {
            /* photon counts: the values of the table (the same function of v) */
            j->radius[i] = j->tab_radius[(int64_t)v];
            lost[x] = j->tab_lost[(int64_t)v];
        } else {
            psf_radius_one(j, v, j->radius + i, lost + x);
        }
    }
    int32_t m = -1;
    for (int64_t i = i0; i < i0 + j->nx; ++i)
        if (j->radius[i] > m) m = j->radius[i];
    j->rowmax[y] = m;
}

static void psf_radius_rows(psf_job *j, int64_t y0, int64_t y1)
{
    for (int64_t y = y0; y < y1; ++y) psf_radius_row(j, y, j->lost + y * j->nx);
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
    /* taps beyond every source's radius in the window are masked for all lanes: skipped */
    int64_t rm = -1;
    for (int64_t ys = ylo; ys <= yhi; ++ys)
        if (j->rowmax[ys] > rm) rm = j->rowmax[ys];
    const int64_t rmax2 = rm < 0 ? -1 : rm * rm;
    int64_t xt = 0;
    while (xt < nx) {
        if (xt >= R && xt >= 1 && xt + PSF_LANES - 1 + R <= nx - 1) {
            /* PSF_LANES interior targets at once (independent float sums, each in its sources'
             * order): every source of their row windows lies on the image, none wraps */
            v8f acc[PSF_VECS];
            for (int q = 0; q < PSF_VECS; ++q) acc[q] = (v8f){0};
            for (int64_t ys = ylo; ys <= yhi; ++ys) {
                int64_t dy = yt - ys;
                if (dy * dy > rmax2) continue;       /* no source reaches this far: all masked */
                const double *krow = j->kernel + (R + dy) * K + R;
                int64_t base = ys * nx + xt - R;
                int64_t w = 0;
                while ((w + 1) * (w + 1) + dy * dy <= rmax2 && w < R) ++w;
                for (int64_t u = R - w; u <= R + w; ++u) {
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

/* rows [start, ny) of the job's phase on nthreads threads */
static void psf_parallel(psf_job *j, int64_t start, int nthreads)
{
    pthread_t th[64];
    int started = 0;
    if (nthreads > 64) nthreads = 64;
    atomic_store(&j->next, start);
    for (int t = 1; t < nthreads; ++t)
        if (pthread_create(&th[started], NULL, psf_worker, j) == 0) ++started;
    psf_worker(j);
    for (int t = 0; t < started; ++t) pthread_join(th[t], NULL);
}

/* psf_job's buffers, and the radii and lost photons of the integers [0, tab_max] when tab_max >= 0
 * (the counts of a noise image); 0 when memory runs out */
static int psf_job_init(psf_job *j, const float *img, int64_t nx, int64_t ny, int gauss, double fwhm, double g,
                        int64_t user_radius, int64_t R, int wrap, const double *kernel, float *out, double tab_max,
                        int lost_rows)
{
    int64_t n = nx * ny;
    memset(j, 0, sizeof(*j));
    j->img = img; j->nx = nx; j->ny = ny; j->R = R; j->user_radius = user_radius;
    j->maxwidth = nx > ny ? nx : ny;
    j->gauss = gauss; j->wrap = wrap; j->fwhm = fwhm; j->g = g; j->kernel = kernel; j->out = out;
    j->radius = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    j->rowmax = (int32_t *)malloc(sizeof(int32_t) * (size_t)(ny > 0 ? ny : 1));
    /* lost photons of every pixel (summed after the rows, in pixel order), or of lost_rows rows */
    int64_t nl = lost_rows > 0 ? lost_rows * nx : n;
    j->lost = (double *)malloc(sizeof(double) * (size_t)(nl > 0 ? nl : 1));
    if (!j->radius || !j->lost || !j->rowmax) return 0;
    if (tab_max >= 0.0 && tab_max < (double)(1 << 22)) {
        int64_t size = (int64_t)tab_max + 1;
        j->tab_radius = (int32_t *)malloc(sizeof(int32_t) * (size_t)size);
        j->tab_lost = (double *)malloc(sizeof(double) * (size_t)size);
        if (j->tab_radius && j->tab_lost) {
            j->tab_radius[0] = -1;
            j->tab_lost[0] = 0.0;
            for (int64_t k = 1; k < size; ++k) psf_radius_one(j, (double)k, j->tab_radius + k, j->tab_lost + k);
            j->tab_size = size;
        }
    }
    return 1;
}

static void psf_job_free(psf_job *j)
{
    free(j->tab_radius);
    free(j->tab_lost);
    free(j->radius);
    free(j->rowmax);
    free(j->lost);
}

/* the lost photons spread evenly over the blurred image, as the C */
static void psf_add_lost(float *out, int64_t n, double total)
{
    double add = total / (double)n;
    for (int64_t i = 0; i < n; ++i) out[i] = (float)((double)out[i] + add);
}

/* noisify's apply_psf after the radius choice: out (nx*ny float32) = the blurred image plus the
 * lost photons spread evenly; returns the total of lost photons (summed in pixel order, as the C).
 * Returns -1 when memory runs out (nothing written). */
double nb_psf(const float *img, int64_t nx, int64_t ny, int gauss, double fwhm, double g, int64_t user_radius,
              int64_t R, int wrap, const double *kernel, float *out, int nthreads)
{
    int64_t n = nx * ny;
    /* the noise image's counts are integers: their radii and lost photons once per value */
    float vmax = 0.0f;
    int64_t integers = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (img[i] > vmax) vmax = img[i];
        integers += img[i] == (float)(int64_t)img[i];
    }
    int table = integers > n / 2 && vmax < (float)(1 << 22) && (double)vmax < 0.5 * (double)n;
    psf_job j;
    if (!psf_job_init(&j, img, nx, ny, gauss, fwhm, g, user_radius, R, wrap, kernel, out,
                      table ? (double)vmax : -1.0, 0)) {
        psf_job_free(&j);
        return -1.0;
    }
    j.phase = 0;
    psf_parallel(&j, 0, nthreads);
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += j.lost[i];
    j.phase = 1;
    psf_parallel(&j, 0, nthreads);
    psf_add_lost(out, n, total);
    psf_job_free(&j);
    return total;
}

/* ---- noisify's draws with the PSF behind them ------------------------------------------------ */
struct psf_follow {
    psf_job j;
    _Atomic int64_t rows_in;  /* rows of counts the pixel loop has finished */
    int64_t next0, next1;     /* the next row of phase 0 (radii, lost photons) and of phase 1 (sums) */
    double total;             /* lost photons of rows [0, next0), summed in pixel order */
};

static void psf_follow_rows(psf_follow *F, int64_t rows)
{
    atomic_store_explicit(&F->rows_in, rows, memory_order_release);
}

static void psf_phase0_next(psf_follow *F)
{
    int64_t y = F->next0++, nx = F->j.nx;
    psf_radius_row(&F->j, y, F->j.lost);          /* (one row's buffer: summed here, in order) */
    const double *l = F->j.lost;
    for (int64_t x = 0; x < nx; ++x) F->total += l[x];
}

/* one row of PSF work whose inputs are ready (the producer thread; 0: none now) */
static int psf_follow_step(void *ctx)
{
    psf_follow *F = (psf_follow *)ctx;
    if (F->next0 < atomic_load_explicit(&F->rows_in, memory_order_acquire)) {
        psf_phase0_next(F);
        return 1;
    }
    if (F->next1 < F->j.ny) {
        /* a row's sums take the sources of rows up to R below it (R + 1 above) */
        int64_t need = F->next1 + F->j.R < F->j.ny - 1 ? F->next1 + F->j.R : F->j.ny - 1;
        if (F->next0 > need) {
            psf_row(&F->j, F->next1++);
            return 1;
        }
    }
    return 0;
}

/* nb_photon_noise, then nb_psf of the counts into out (made mostly on the producer thread while
 * the counts are drawn): the same counts and blurred image.  R must be at least the radius of
 * every count (the kernel is the C's for R; a larger R gives the same sums); tab_max: the counts'
 * bound for the table of radii (-1: none).  Returns the photon sum, *lost the lost photons; -1
 * when memory runs out (nothing drawn). */
double nb_photon_noise_psf(const float *photons, int64_t nx, int64_t ny, double flicker, double calib,
                           int64_t *ist, double *fst, int64_t *seed, int64_t *cseed, float *counts, int nthreads,
                           int gauss, double fwhm, double g, int64_t user_radius, int64_t R, int wrap,
                           const double *kernel, double tab_max, float *out, double *lost)
{
    int64_t n = nx * ny;
    psf_follow F;
    if (!psf_job_init(&F.j, counts, nx, ny, gauss, fwhm, g, user_radius, R, wrap, kernel, out, tab_max, 1)) {
        psf_job_free(&F.j);
        return -1.0;
    }
    atomic_init(&F.rows_in, 0);
    F.next0 = F.next1 = 0;
    F.total = 0.0;
    double total = photon_noise_impl(photons, n, flicker, calib, ist, fst, seed, cseed, counts, nthreads,
                                     &F, nx > 0 ? nx : 1);
    if (total < 0.0) {
        psf_job_free(&F.j);
        return -1.0;
    }
    /* what the producer thread had not done */
    while (F.next0 < ny) psf_phase0_next(&F);
    F.j.phase = 1;
    psf_parallel(&F.j, F.next1, nthreads);
    psf_add_lost(out, n, F.total);
    *lost = F.total;
    psf_job_free(&F.j);
    return total;
}

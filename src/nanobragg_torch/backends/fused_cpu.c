/* Fused forward CPU kernel of nanobragg_torch (see fused_cpu.py).
 *
 * Compiled on first use with the system C compiler into a per-user cache and loaded with
 * ctypes.  The parameter record below is mirrored by fused_cpu.py's _Params; change both
 * together (the cache key is the hash of these sources, so a change recompiles).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>

typedef struct {
    const int64_t *pixels;        /* (P,) flat pixel indices, raster order */
    int64_t fpixels;
    int32_t thicksteps, oversample, n_src, n_lat;
    int32_t curved, point_pixel, thickness_on, nopolar;
    int32_t shape;                /* 0 square, 1 round, 2 gauss, 3 tophat */
    int32_t over_thick, over_polar, over_omega, compound;
    int32_t water, have_grid;
    int32_t N_integer[3];
    int32_t hkl_min[3], hkl_max[3], F_shape[3];
    double fdet[3], sdet[3], odet[3], pix0[3], beam[3];
    double pixel_size, thickstep, mu, distance, close_distance, kahn;
    double N[3], fudge, recip[9], default_F, I_bg, dmin, scale;
    const void *incident, *wavelength, *e_in, *b_in;   /* (S,3) (S,) (S,3) (S,3) in REAL */
    const void *lattices;         /* (M,3,3) rows a, b, c, REAL */
    const void *F_grid;           /* flat C-order grid, REAL, or NULL */
    void *image;                  /* (spixels*fpixels,) REAL: written at the pixel indices */
    void *omega;                  /* (ceil(P / lanes),) REAL: solid angle summed over each block of pixels */
} nb_params;

#define NB_DOUBLE 1
#define REAL double
#define NB_FN(x) x##_f64
#define NB_SQRT sqrt
#define NB_CEIL ceil
#define NB_RINT rint
#define NB_FABS fabs
#include "fused_kernel.h"
#undef NB_DOUBLE
#undef REAL
#undef NB_FN
#undef NB_SQRT
#undef NB_CEIL
#undef NB_RINT
#undef NB_FABS

#define NB_DOUBLE 0
#define REAL float
#define NB_FN(x) x##_f32
#define NB_SQRT sqrtf
#define NB_CEIL ceilf
#define NB_RINT rintf
#define NB_FABS fabsf
#include "fused_kernel.h"

/* ---- threads: blocks of pixels handed out from a shared counter (dynamic schedule) ---- */
#define NB_GRAIN 64   /* a multiple of NB_LANES: blocks of lanes start at multiples of NB_LANES */

typedef struct {
    const nb_params *p;
    int64_t lo, hi;
    int64_t *next;
    int is_double;
} nb_job;

static void *nb_worker(void *arg)
{
    nb_job *job = (nb_job *)arg;
    for (;;) {
        int64_t a = __atomic_fetch_add(job->next, NB_GRAIN, __ATOMIC_RELAXED);
        if (a >= job->hi) break;
        int64_t b = a + NB_GRAIN < job->hi ? a + NB_GRAIN : job->hi;
        if (job->is_double) render_range_f64(job->p, a, b);
        else render_range_f32(job->p, a, b);
    }
    return 0;
}

/* Render pixels [lo, hi) of p->pixels with nthreads threads (the caller's thread is one);
 * lo must be a multiple of NB_GRAIN. */
int nb_render(const nb_params *p, int64_t lo, int64_t hi, int nthreads, int is_double)
{
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 256) nthreads = 256;
    int64_t next = lo;
    nb_job job = {p, lo, hi, &next, is_double};
    pthread_t th[256];
    int started = 0;
    for (int i = 1; i < nthreads; i++) {
        if (pthread_create(&th[started], 0, nb_worker, &job) == 0) started++;
    }
    nb_worker(&job);
    for (int i = 0; i < started; i++) pthread_join(th[i], 0);
    return 0;
}

int nb_abi_version(void) { return 2; }
int nb_lanes(void) { return 16; }

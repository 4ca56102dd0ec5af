/* The fused CPU kernel's body, included twice by fused_cpu.c: once with REAL = double
 * (NB_FN(x) = x##_f64), once with REAL = float (x##_f32).
 *
 * One call renders a range of the problem's pixel list.  Pixels are taken in blocks of
 * NB_LANES; every stage loops over the lanes of a block (#pragma omp simd), so the
 * arithmetic runs on SIMD registers and nothing of size (pixels x subpaths) is stored.
 * Loop order inside a pixel is the reference program's: layer, sub_s, sub_f, source,
 * lattice (phi step x mosaic domain); it decides which evaluation is "first" for the
 * cached factors and the order of the compounding (legacy) oversample rule.
 */

/* sin(pi r) for |r| <= 1/2: odd polynomial, near-minimax in r^2 (relative error
 * 2e-15 in double, 6e-9 in float).  No range reduction is needed by the callers. */
static inline REAL NB_FN(sinpi_red)(REAL r)
{
    REAL s = r * r;
#if NB_DOUBLE
    REAL p = (REAL)-2.0985006565134067e-05;
    p = p * s + (REAL)0.00046584762595337114;
    p = p * s + (REAL)-0.00737031250375014;
    p = p * s + (REAL)0.08214586917113734;
    p = p * s + (REAL)-0.5992645278952047;
    p = p * s + (REAL)2.5501640398188297;
    p = p * s + (REAL)-5.167712780049036;
    p = p * s + (REAL)3.1415926535897927;
#else
    REAL p = (REAL)0.07753284482124147;
    p = p * s + (REAL)-0.5982277010974164;
    p = p * s + (REAL)2.5500672995789526;
    p = p * s + (REAL)-5.167709545250509;
    p = p * s + (REAL)3.141592635219913;
#endif
    return r * p;
}

/* round half to even (the current rounding mode): one vroundp[sd] per vector with -fno-math-errno */
static inline REAL NB_FN(rint_fast)(REAL x)
{
    return NB_RINT(x);
}

/* NB_LANES (pixels per block) is set by fused_cpu.c for each precision */

typedef struct {
    REAL fdet[3], sdet[3], odet[3], pix0[3], beam[3];
    REAL pixel_size, thickstep, mu, distance, close_distance, kahn;
    REAL Na, Nb, Nc, NNN, fudge, recip[9], default_F, I_bg, dmin, scale;
    REAL eps;
} NB_FN(consts);

static void NB_FN(load_consts)(const nb_params *p, NB_FN(consts) *c)
{
    for (int i = 0; i < 3; i++) {
        c->fdet[i] = (REAL)p->fdet[i]; c->sdet[i] = (REAL)p->sdet[i]; c->odet[i] = (REAL)p->odet[i];
        c->pix0[i] = (REAL)p->pix0[i]; c->beam[i] = (REAL)p->beam[i];
    }
    c->pixel_size = (REAL)p->pixel_size; c->thickstep = (REAL)p->thickstep; c->mu = (REAL)p->mu;
    c->distance = (REAL)p->distance; c->close_distance = (REAL)p->close_distance; c->kahn = (REAL)p->kahn;
    c->Na = (REAL)p->N[0]; c->Nb = (REAL)p->N[1]; c->Nc = (REAL)p->N[2];
    c->NNN = (REAL)(p->N[0] * p->N[1] * p->N[2]); c->fudge = (REAL)p->fudge;
    for (int i = 0; i < 9; i++) c->recip[i] = (REAL)p->recip[i];
    c->default_F = (REAL)p->default_F; c->I_bg = (REAL)p->I_bg; c->dmin = (REAL)p->dmin;
    c->scale = (REAL)p->scale;
#if NB_DOUBLE
    c->eps = (REAL)1e-90;
#else
    c->eps = (REAL)1e-12f;
#endif
}

/* (sin(pi N u) / sin(pi u)) of one axis as a (numerator, denominator) pair, both bounded
 * away from zero so that one division serves the three axes.  wI = 1 for an integer N (the
 * phase N d of the fractional part d = u - rint(u), accurate in float), 0 otherwise (N u);
 * an axis with N <= 1 contributes 1 (on = 0). */
#define NB_AXIS(u, N, wI, on, num, den)                                                      \
    do {                                                                                     \
        REAL n_ = NB_RINT(u);                                                                \
        REAL d_ = (u) - n_;                                                                  \
        REAL a_ = (N) * ((u) - (wI) * n_);                                                   \
        REAL r_ = a_ - NB_RINT(a_);                                                          \
        REAL sd_ = NB_FN(sinpi_red)(d_);                                                     \
        REAL sn_ = NB_FN(sinpi_red)(r_);                                                     \
        REAL tiny_ = NB_FABS(sd_) < eps;                                                     \
        num *= (on) ? (tiny_ ? (N) : sn_) : (REAL)1;                                         \
        den *= (on) ? (tiny_ ? (REAL)1 : sd_) : (REAL)1;                                     \
    } while (0)

static inline REAL NB_FN(sinc3)(REAL x)
{
    if (x == 0) return (REAL)1;
    double xd = (double)x;
    return (REAL)(3.0 * (sin(xd) / xd - cos(xd)) / (xd * xd));
}

/* Render pixels [lo, hi) of the pixel list. */
static void NB_FN(render_range)(const nb_params *p, int64_t lo, int64_t hi)
{
    NB_FN(consts) c;
    NB_FN(load_consts)(p, &c);
    const int T = p->thicksteps, O = p->oversample, S = p->n_src, M = p->n_lat;
    const REAL *inc = (const REAL *)p->incident, *lam = (const REAL *)p->wavelength;
    const REAL *e_in = (const REAL *)p->e_in, *b_in = (const REAL *)p->b_in;
    const REAL *lat = (const REAL *)p->lattices, *grid = (const REAL *)p->F_grid;
    REAL *image = (REAL *)p->image, *omega_out = (REAL *)p->omega;
    const REAL sub = c.pixel_size / (REAL)O;
    const int over_thick = p->over_thick, over_polar = p->over_polar, over_omega = p->over_omega;
    const int any_over = over_thick | over_polar | over_omega;
    const int compound = p->compound;
    const int thick_on = p->thickness_on, nopolar = p->nopolar, use_dmin = p->dmin > 0;
    const int have_grid = p->have_grid, shape = p->shape, water = p->water;
    const REAL wA = (REAL)p->N_integer[0], wB = (REAL)p->N_integer[1], wC = (REAL)p->N_integer[2];
    const int doA = c.Na > 1, doB = c.Nb > 1, doC = c.Nc > 1;
    const REAL Na = c.Na, Nb = c.Nb, Nc = c.Nc, eps = c.eps;
    const int h_lo = p->hkl_min[0], k_lo = p->hkl_min[1], l_lo = p->hkl_min[2];
    const int h_hi = p->hkl_max[0], k_hi = p->hkl_max[1], l_hi = p->hkl_max[2];
    const int strideH = p->F_shape[1] * p->F_shape[2], strideK = p->F_shape[2];
    const REAL hlo = (REAL)h_lo, klo = (REAL)k_lo, llo = (REAL)l_lo, hhi = (REAL)h_hi, khi = (REAL)k_hi, lhi = (REAL)l_hi;
    const REAL F0sq = c.default_F * c.default_F;

    for (int64_t b0 = lo; b0 < hi; b0 += NB_LANES) {
        const int n = (int)((hi - b0) < NB_LANES ? (hi - b0) : NB_LANES);
        REAL fp[NB_LANES], sp[NB_LANES];
        REAL I[NB_LANES], omega_sum[NB_LANES], omega_c[NB_LANES], capture_c[NB_LANES], polar_c[NB_LANES];
        int found[NB_LANES], all_found = 0;
        REAL px[NB_LANES], py[NB_LANES], pz[NB_LANES], R[NB_LANES];
        REAL dx[NB_LANES], dy[NB_LANES], dz[NB_LANES];
        REAL omega_e[NB_LANES], capture_e[NB_LANES];
        REAL qx[NB_LANES], qy[NB_LANES], qz[NB_LANES], keep[NB_LANES], fac[NB_LANES];
        REAL term[NB_LANES], live[NB_LANES];
        const double inv_f = 1.0 / (double)p->fpixels;
        /* a block of consecutive pixels (the usual case): indices without loads, one vector store */
        const int64_t first_pix = p->pixels[b0];
        const int contig = n == NB_LANES && p->pixels[b0 + n - 1] - first_pix == n - 1;
        double pixd[NB_LANES];
        if (contig) {
            for (int j = 0; j < NB_LANES; j++) pixd[j] = (double)(first_pix + j);
        } else {
            for (int j = 0; j < NB_LANES; j++) pixd[j] = (double)p->pixels[b0 + (j < n ? j : n - 1)];
        }
#pragma omp simd
        for (int j = 0; j < NB_LANES; j++) {
            /* slow, fast index of the pixel: exact in double for any realistic detector */
            double pix = pixd[j];
            double s_ = floor((pix + 0.5) * inv_f);
            fp[j] = (REAL)(pix - s_ * (double)p->fpixels);
            sp[j] = (REAL)s_;
            I[j] = c.I_bg; omega_sum[j] = 0; omega_c[j] = 0; capture_c[j] = 1;
            polar_c[j] = nopolar ? (REAL)1 : (REAL)0; found[j] = 0;
            omega_e[j] = 1; capture_e[j] = 1;
        }
        for (int t = 0; t < T; t++) {
            const REAL Od = (REAL)t * c.thickstep;
            for (int ss = 0; ss < O; ss++) {
                for (int sf = 0; sf < O; sf++) {
                    const int first_sub = (ss == 0) & (sf == 0);
                    /* sub-pixel position, distance, unit diffracted vector, solid angle */
#pragma omp simd
                    for (int j = 0; j < NB_LANES; j++) {
                        REAL Fd = sub * (fp[j] * (REAL)O + (REAL)sf) + sub / (REAL)2;
                        REAL Sd = sub * (sp[j] * (REAL)O + (REAL)ss) + sub / (REAL)2;
                        px[j] = Fd * c.fdet[0] + Sd * c.sdet[0] + Od * c.odet[0] + c.pix0[0];
                        py[j] = Fd * c.fdet[1] + Sd * c.sdet[1] + Od * c.odet[1] + c.pix0[1];
                        pz[j] = Fd * c.fdet[2] + Sd * c.sdet[2] + Od * c.odet[2] + c.pix0[2];
                    }
                    if (p->curved) {
                        for (int j = 0; j < NB_LANES; j++) {
                            /* rotate distance*beam about sdet by y/distance, then about fdet by z/distance */
                            REAL v[3] = {c.distance * c.beam[0], c.distance * c.beam[1], c.distance * c.beam[2]};
                            REAL angs[2] = {py[j] / c.distance, pz[j] / c.distance};
                            const REAL *axes[2] = {c.sdet, c.fdet};
                            for (int r = 0; r < 2; r++) {
                                const REAL *a = axes[r];
                                REAL sn = (REAL)sin((double)angs[r]), cs = (REAL)cos((double)angs[r]);
                                REAL dot = (a[0] * v[0] + a[1] * v[1] + a[2] * v[2]) * ((REAL)1 - cs);
                                REAL nx = a[0] * dot + v[0] * cs + (-a[2] * v[1] + a[1] * v[2]) * sn;
                                REAL ny = a[1] * dot + v[1] * cs + (a[2] * v[0] - a[0] * v[2]) * sn;
                                REAL nz = a[2] * dot + v[2] * cs + (-a[1] * v[0] + a[0] * v[1]) * sn;
                                v[0] = nx; v[1] = ny; v[2] = nz;
                            }
                            px[j] = v[0]; py[j] = v[1]; pz[j] = v[2];
                        }
                    }
                    const int want_omega = over_omega || (t == 0 && first_sub);
                    const int want_capture = thick_on && (over_thick || (t == T - 1 && first_sub));
#pragma omp simd
                    for (int j = 0; j < NB_LANES; j++) {
                        REAL r2 = px[j] * px[j] + py[j] * py[j] + pz[j] * pz[j];
                        REAL Rj = NB_SQRT(r2);
                        REAL iR = (REAL)1 / Rj;
                        R[j] = Rj;
                        dx[j] = px[j] * iR; dy[j] = py[j] * iR; dz[j] = pz[j] * iR;
                    }
                    if (want_omega) {
                        const REAL k_om = c.pixel_size * c.pixel_size * c.close_distance;
#pragma omp simd
                        for (int j = 0; j < NB_LANES; j++) {
                            REAL iR = (REAL)1 / R[j];
                            omega_e[j] = p->point_pixel ? iR * iR : k_om * iR * iR * iR;
                        }
                    }
                    if (want_capture) {
                        for (int j = 0; j < NB_LANES; j++) {
                            /* as physics.detector_response.capture_fraction: the path through a layer is
                               thickstep/|cos| from either side (a curved-detector pixel past the plane's
                               horizon sees the sensor from behind); a grazing ray (cos = 0) is absorbed in
                               the first layer; a sensor of zero optical depth absorbs nothing */
                            REAL par = dx[j] * c.odet[0] + dy[j] * c.odet[1] + dz[j] * c.odet[2];
                            const REAL tm = (REAL)((double)c.thickstep * (double)c.mu);
                            double e = tm == (REAL)0 ? 0.0 : (double)tm / fabs((double)par);
                            double front = t == 0 ? 1.0 : exp(-(double)t * e);
                            capture_e[j] = (REAL)(front - exp(-(double)(t + 1) * e));
                        }
                        if (!over_thick)
                            for (int j = 0; j < NB_LANES; j++) capture_c[j] = capture_e[j];
                    }
                    if (over_omega) {
                        for (int j = 0; j < NB_LANES; j++) omega_sum[j] += omega_e[j];
                    } else if (want_omega) {
                        for (int j = 0; j < NB_LANES; j++) {
                            omega_c[j] = omega_e[j];
                            omega_sum[j] = omega_e[j] * (REAL)(T * O * O);
                        }
                    }
                    for (int s = 0; s < S; s++) {
                        const REAL ix = inc[3 * s], iy = inc[3 * s + 1], iz = inc[3 * s + 2];
                        const REAL lm = lam[s], ilm = (REAL)1 / lam[s];
                        /* scattering vector, d_min cut, polarization */
#pragma omp simd
                        for (int j = 0; j < NB_LANES; j++) {
                            REAL ax = dx[j] - ix, ay = dy[j] - iy, az = dz[j] - iz;
                            qx[j] = ax * ilm; qy[j] = ay * ilm; qz[j] = az * ilm;
                            REAL k = 1;
                            if (use_dmin) {
                                REAL stol = (REAL)0.5 * NB_SQRT(ax * ax + ay * ay + az * az) / lm;
                                k = (stol > 0 && c.dmin > (REAL)0.5 / (stol > 0 ? stol : (REAL)1)) ? (REAL)0 : (REAL)1;
                            }
                            keep[j] = k;
                        }
                        int need_polar = !nopolar && over_polar;
                        if (!nopolar && !over_polar && !all_found) {
                            int missing = 0;
                            for (int j = 0; j < NB_LANES; j++) {
                                need_polar |= !found[j] && keep[j] != 0;
                                missing |= !found[j];
                            }
                            /* once every lane has its cached polarization, no more scans in this block */
                            if (!missing) all_found = 1;
                        }
                        REAL pol[NB_LANES];
                        if (need_polar) {
                            const REAL *E = e_in + 3 * s, *B = b_in + 3 * s;
#pragma omp simd
                            for (int j = 0; j < NB_LANES; j++) {
                                REAL cos2t = ix * dx[j] + iy * dy[j] + iz * dz[j];
                                REAL c2 = cos2t * cos2t;
                                REAL Eo = dx[j] * E[0] + dy[j] * E[1] + dz[j] * E[2];
                                REAL Bo = dx[j] * B[0] + dy[j] * B[1] + dz[j] * B[2];
                                REAL rr = Eo * Eo + Bo * Bo;
                                REAL cos2psi = rr > 0 ? (Eo * Eo - Bo * Bo) / (rr > 0 ? rr : (REAL)1) : (REAL)1;
                                pol[j] = (REAL)0.5 * ((REAL)1 + c2 - c.kahn * cos2psi * ((REAL)1 - c2));
                            }
                            if (!over_polar)
                                for (int j = 0; j < NB_LANES; j++)
                                    if (!found[j] && keep[j] != 0) { polar_c[j] = pol[j]; found[j] = 1; }
                        }
                        if (any_over) {
#pragma omp simd
                            for (int j = 0; j < NB_LANES; j++) {
                                REAL f = 1;
                                if (over_thick && thick_on) f *= capture_e[j];
                                if (over_polar && !nopolar) f *= pol[j];
                                if (over_omega) f *= omega_e[j];
                                fac[j] = f;
                            }
                        }
                        for (int m = 0; m < M; m++) {
                            const REAL *L = lat + 9 * m;
                            const REAL a0 = L[0], a1 = L[1], a2 = L[2], b0_ = L[3], b1 = L[4], b2 = L[5];
                            const REAL c0 = L[6], c1 = L[7], c2_ = L[8];
                            if (shape == 0 && !have_grid) {
                                /* the hot path: parallelepiped crystal, constant F */
#pragma omp simd
                                for (int j = 0; j < NB_LANES; j++) {
                                    REAL h = qx[j] * a0 + qy[j] * a1 + qz[j] * a2;
                                    REAL k = qx[j] * b0_ + qy[j] * b1 + qz[j] * b2;
                                    REAL l = qx[j] * c0 + qy[j] * c1 + qz[j] * c2_;
                                    REAL num = 1, den = 1;
                                    NB_AXIS(h, Na, wA, doA, num, den);
                                    NB_AXIS(k, Nb, wB, doB, num, den);
                                    NB_AXIS(l, Nc, wC, doC, num, den);
                                    REAL f = num / den;
                                    term[j] = f * f * F0sq;
                                    live[j] = f != 0 ? (REAL)1 : (REAL)0;
                                }
                            } else if (shape == 0) {
                                /* parallelepiped crystal, nearest structure factor of the grid */
#pragma omp simd
                                for (int j = 0; j < NB_LANES; j++) {
                                    REAL h = qx[j] * a0 + qy[j] * a1 + qz[j] * a2;
                                    REAL k = qx[j] * b0_ + qy[j] * b1 + qz[j] * b2;
                                    REAL l = qx[j] * c0 + qy[j] * c1 + qz[j] * c2_;
                                    REAL num = 1, den = 1;
                                    NB_AXIS(h, Na, wA, doA, num, den);
                                    NB_AXIS(k, Nb, wB, doB, num, den);
                                    NB_AXIS(l, Nc, wC, doC, num, den);
                                    REAL f = num / den;
                                    REAL h0 = NB_CEIL(h - (REAL)0.5), k0 = NB_CEIL(k - (REAL)0.5), l0 = NB_CEIL(l - (REAL)0.5);
                                    int in = (h0 >= hlo) & (h0 <= hhi) & (k0 >= klo) & (k0 <= khi) & (l0 >= llo) & (l0 <= lhi);
                                    int idx = (int)(h0 - hlo) * strideH + (int)(k0 - klo) * strideK + (int)(l0 - llo);
                                    REAL Fc = in ? grid[in ? idx : 0] : c.default_F;
                                    term[j] = Fc * Fc * f * f;
                                    live[j] = f != 0 ? (REAL)1 : (REAL)0;
                                }
                            } else {
#pragma omp simd
                                for (int j = 0; j < NB_LANES; j++) {
                                    REAL h = qx[j] * a0 + qy[j] * a1 + qz[j] * a2;
                                    REAL k = qx[j] * b0_ + qy[j] * b1 + qz[j] * b2;
                                    REAL l = qx[j] * c0 + qy[j] * c1 + qz[j] * c2_;
                                    REAL h0 = NB_CEIL(h - (REAL)0.5), k0 = NB_CEIL(k - (REAL)0.5), l0 = NB_CEIL(l - (REAL)0.5);
                                    REAL F2l;
                                    if (shape == 0) {
                                        REAL num = 1, den = 1;
                                        NB_AXIS(h, Na, wA, doA, num, den);
                                        NB_AXIS(k, Nb, wB, doB, num, den);
                                        NB_AXIS(l, Nc, wC, doC, num, den);
                                        REAL f = num / den;
                                        F2l = f * f;
                                    } else {
                                        REAL dh = h - h0, dk = k - k0, dl = l - l0, fl;
                                        if (shape == 1) {
                                            REAL hrad = dh * dh * c.Na * c.Na + dk * dk * c.Nb * c.Nb + dl * dl * c.Nc * c.Nc;
                                            fl = c.NNN * (REAL)0.723601254558268 *
                                                 NB_FN(sinc3)((REAL)3.14159265358979323846 * NB_SQRT(hrad * c.fudge));
                                        } else {
                                            const REAL *r = c.recip;
                                            REAL ex = dh * r[0] + dk * r[3] + dl * r[6];
                                            REAL ey = dh * r[1] + dk * r[4] + dl * r[7];
                                            REAL ez = dh * r[2] + dk * r[5] + dl * r[8];
                                            REAL rad = (ex * ex + ey * ey + ez * ez) * c.Na * c.Na * c.Nb * c.Nb * c.Nc * c.Nc;
                                            if (shape == 2)
                                                fl = c.NNN * (REAL)exp(-(double)(rad / (REAL)0.63 * c.fudge));
                                            else
                                                fl = rad * c.fudge < (REAL)0.3969 ? c.NNN : (REAL)0;
                                        }
                                        F2l = fl * fl;
                                    }
                                    REAL Fc = c.default_F;
                                    if (have_grid) {
                                        int in = (h0 >= (REAL)h_lo) & (h0 <= (REAL)h_hi) & (k0 >= (REAL)k_lo) &
                                                 (k0 <= (REAL)k_hi) & (l0 >= (REAL)l_lo) & (l0 <= (REAL)l_hi);
                                        int idx = in ? ((int)(h0 - (REAL)h_lo) * strideH + (int)(k0 - (REAL)k_lo) * strideK +
                                                        (int)(l0 - (REAL)l_lo)) : 0;
                                        Fc = in ? grid[idx] : c.default_F;
                                    }
                                    term[j] = Fc * Fc * F2l;
                                    live[j] = (F2l != 0) ? (REAL)1 : (REAL)0;
                                }
                            }
                            /* accumulate by the oversample rule */
                            if (!any_over) {
#pragma omp simd
                                for (int j = 0; j < NB_LANES; j++) I[j] += keep[j] != 0 ? term[j] : (REAL)0;
                            } else if (compound) {
                                /* the C's rule: the running sum (I_bg included) times the factor after every term */
#pragma omp simd
                                for (int j = 0; j < NB_LANES; j++) {
                                    int ev = keep[j] != 0 && (live[j] != 0 || water);
                                    I[j] = ev ? (I[j] + term[j]) * fac[j] : I[j];
                                }
                            } else {
#pragma omp simd
                                for (int j = 0; j < NB_LANES; j++) I[j] += keep[j] != 0 ? term[j] * fac[j] : (REAL)0;
                            }
                        }
                    }
                }
            }
        }
        const int use_cap = !over_thick && thick_on;
        REAL val[NB_LANES];
#pragma omp simd
        for (int j = 0; j < NB_LANES; j++) {
            REAL v = c.scale * I[j];
            v *= use_cap ? capture_c[j] : (REAL)1;
            v *= !over_polar ? polar_c[j] : (REAL)1;
            v *= !over_omega ? omega_c[j] : (REAL)1;
            val[j] = v;
        }
        if (contig) {
            REAL *dst = image + first_pix;
#pragma omp simd
            for (int j = 0; j < NB_LANES; j++) dst[j] = val[j];
        } else {
            for (int j = 0; j < n; j++) image[p->pixels[b0 + j]] = val[j];
        }
        REAL osum = 0;
        for (int j = 0; j < n; j++) osum += omega_sum[j];
        /* one partial sum per block of lanes (blocks start at multiples of NB_LANES): deterministic */
        omega_out[b0 / NB_LANES] = osum;
    }
}

#undef NB_AXIS
#undef NB_LANES

"""Fused CPU kernel of the amorphous-scattering sum (the command line's fast path).

The same contract as :func:`nanobragg_torch.models.amorphous.amorphous_image`
(the torch reference and gradient path): one pass per pixel over sub-pixels
and sources in double precision, with the table's per-interval cubics, the
polarization factor and the solid angle.  Two builds of the same body:
``backends/camorphous.c`` (C, rows on threads; built once per machine into the
kernel cache, see :mod:`nanobragg_torch.backends.cbuild`) and the function
below compiled with numba (``parallel`` over detector rows) when the C kernel
cannot be built; plain Python without either.  No autograd: the CLI uses it
when nothing requires a gradient; tests check it against the torch path.
"""
from __future__ import annotations

import math
import threading

import numpy as np

_LOCK = threading.Lock()
_JIT = None


def _position_py(Fdet, Sdet, pix0, fdet, sdet, beam, distance, curved):
    """The lab position (m) of the detector point (Fdet, Sdet): on the plane, or on the sphere of
    -curved_det (distance x beam turned about sdet by y/distance, then about fdet by z/distance)."""
    x = Fdet * fdet[0] + Sdet * sdet[0] + pix0[0]
    y = Fdet * fdet[1] + Sdet * sdet[1] + pix0[1]
    z = Fdet * fdet[2] + Sdet * sdet[2] + pix0[2]
    if curved:
        vx, vy, vz = distance * beam[0], distance * beam[1], distance * beam[2]
        for step in range(2):
            if step == 0:
                ax, ay, az, phi = sdet[0], sdet[1], sdet[2], y / distance
            else:
                ax, ay, az, phi = fdet[0], fdet[1], fdet[2], z / distance
            sn, cs = math.sin(phi), math.cos(phi)
            dot = (ax * vx + ay * vy + az * vz) * (1.0 - cs)
            nx = ax * dot + vx * cs + (-az * vy + ay * vz) * sn
            ny = ay * dot + vy * cs + (az * vx - ax * vz) * sn
            nz = az * dot + vz * cs + (-ay * vx + ax * vy) * sn
            vx, vy, vz = nx, ny, nz
        return vx, vy, vz
    return x, y, z


def _polar_py(ix, iy, iz, dx, dy, dz, pol_axis, kahn, nopolar):
    """The polarization factor of incident direction i and diffracted direction d (unit vectors),
    as the C's: B_in = axis x i, E_in = i x B_in (unit vectors), psi from d's components."""
    if nopolar:
        return 1.0
    c2t = ix * dx + iy * dy + iz * dz
    c2s = c2t * c2t
    s2s = 1.0 - c2s
    if kahn != 0.0:
        bx = pol_axis[1] * iz - pol_axis[2] * iy
        by = pol_axis[2] * ix - pol_axis[0] * iz
        bz = pol_axis[0] * iy - pol_axis[1] * ix
        bn = math.sqrt(bx * bx + by * by + bz * bz)
        bx, by, bz = bx / bn, by / bn, bz / bn
        ex = iy * bz - iz * by
        ey = iz * bx - ix * bz
        ez = ix * by - iy * bx
        en = math.sqrt(ex * ex + ey * ey + ez * ez)
        ex, ey, ez = ex / en, ey / en, ez / en
        psi = -math.atan2(dx * bx + dy * by + dz * bz, dx * ex + dy * ey + dz * ez)
        return 0.5 * (1.0 + c2s - kahn * math.cos(2 * psi) * s2s)
    return 0.5 * (1.0 + c2s)


# the kernels' helpers; numba's compiled twins once a kernel is compiled (_use_numba)
_position = _position_py
_polar = _polar_py


def _use_numba(numba):
    """Point the kernels' globals at numba's versions (prange, the compiled helpers) before
    compiling a kernel: numba resolves a kernel's globals when it compiles it."""
    g = globals()
    g["_prange"] = numba.prange
    for name, py in (("_position", _position_py), ("_polar", _polar_py)):
        if g[name] is py:
            g[name] = numba.njit(cache=True, inline="always", error_model="numpy")(py)


def _render_k(S, F, O, pix0, fdet, sdet, beam, distance, close, px, curved, point_pixel,
              inc, lam, w, kahn, pol_axis, nopolar, knots, coef, org, scale, roi, fmap, out):
    sub = px / O
    px2close = px * px * close
    nk = knots.shape[0]
    nsrc = inc.shape[0]
    half_over_lam = 0.5 / lam
    for s in _prange(S):
        lo = 0
        for f in range(F):
            if f < roi[0] or f > roi[1] or s < roi[2] or s > roi[3]:
                out[s, f] = 0.0
                continue
            Ibg = 0.0
            Fbg = 0.0
            for subS in range(O):
                for subF in range(O):
                    Fdet = sub * (f * O + subF) + sub / 2.0
                    Sdet = sub * (s * O + subS) + sub / 2.0
                    x, y, z = _position(Fdet, Sdet, pix0, fdet, sdet, beam, distance, curved)
                    air = math.sqrt(x * x + y * y + z * z)
                    inv = 1.0 / air
                    dx, dy, dz = x * inv, y * inv, z * inv
                    if point_pixel:
                        omega = inv * inv
                    else:
                        omega = px2close * inv * inv * inv
                    for n in range(nsrc):
                        ix, iy, iz = inc[n, 0], inc[n, 1], inc[n, 2]
                        qx = dx - ix
                        qy = dy - iy
                        qz = dz - iz
                        stol = half_over_lam[n] * math.sqrt(qx * qx + qy * qy + qz * qz)
                        # number of knots <= stol = the interval; walked from the previous
                        # sub-pixel's (neighbours differ by a step or two, as in the C's search)
                        while lo < nk and knots[lo] <= stol:
                            lo += 1
                        while lo > 0 and knots[lo - 1] > stol:
                            lo -= 1
                        t = stol - org[lo]
                        Fbg = ((coef[lo, 3] * t + coef[lo, 2]) * t + coef[lo, 1]) * t + coef[lo, 0]
                        sign = 1.0
                        if Fbg < 0.0:
                            sign = -1.0
                        polar = _polar(ix, iy, iz, dx, dy, dz, pol_axis, kahn, nopolar)
                        Ibg += sign * Fbg * Fbg * polar * omega * w[n]
            if fmap:
                out[s, f] = Fbg
            else:
                out[s, f] = Ibg * scale


_prange = range


def kernel():
    """The compiled kernel (numba, parallel), or the plain-Python body when numba is missing."""
    global _JIT
    with _LOCK:
        if _JIT is None:
            try:
                import numba
                _use_numba(numba)
                _JIT = numba.njit(cache=True, parallel=True, error_model="numpy")(_render_k)
            except Exception:  # pragma: no cover - numba missing or broken
                _JIT = _render_k
        return _JIT


IMPLS = ("auto", "c", "numba")


def _c_lib(impl: str):
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "numba":
        return None
    from ..backends import camorphous, cbuild
    lib = camorphous.load()
    if lib is None and impl == "c":
        raise RuntimeError(f"the C amorphous kernel is not available: {camorphous.error()}")
    if lib is None:
        import importlib.util
        cbuild.note_fallback("C amorphous kernel", camorphous.error(),
                             "numba" if importlib.util.find_spec("numba") else "plain Python")
    return lib


def render(S, F, O, geo, px, curved, point_pixel, inc, lam_A, w, kahn, pol_axis, nopolar, table,
           scale, roi, fmap, impl: str = "auto") -> np.ndarray:
    """float32 image (S, F); all vector inputs numpy float64.

    ``impl``: "c" (backends/camorphous.c), "numba" (this module's kernel) or "auto"
    (C when it can be built, else numba)."""
    lib = _c_lib(impl)
    if lib is not None:
        from ..backends import camorphous
        return camorphous.render(lib, S, F, O, geo, px, curved, point_pixel, inc, lam_A, w, kahn, pol_axis,
                                 nopolar, table, scale, roi, fmap)
    out = np.zeros((S, F), dtype=np.float32)
    f64 = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float64))
    kernel()(int(S), int(F), int(O), f64(geo["pix0"]), f64(geo["fdet"]), f64(geo["sdet"]), f64(geo["beam"]),
             float(geo["distance"]), float(geo["close"]), float(px), bool(curved), bool(point_pixel),
             f64(inc).reshape(-1, 3), f64(lam_A), f64(w), float(kahn), f64(pol_axis), bool(nopolar),
             f64(table.stol), f64(table.coefficients), f64(table.origins), float(scale),
             np.asarray(roi, dtype=np.int64), bool(fmap), out)
    return out


def _outputs_k(img, x0, x1, y0, y1, iscale_in, adc, pscale_in, intimg, pgm, stats):
    """nonBragg's statistics, SMV scaling and PGM of a float image, in three passes over the ROI."""
    S, F = img.shape
    n = 0
    total = 0.0
    sumsq = 0.0
    max_I = 0.0
    for s in range(y0, y1 + 1):
        for f in range(x0, x1 + 1):
            v = np.float64(img[s, f])
            n += 1
            total += v
            sumsq += v * v
            if v > max_I:
                max_I = v
    nn = n if n > 0 else 1
    avg = total / nn
    rms = math.sqrt(sumsq / (nn - 1 if nn > 1 else 1))
    dev = 0.0
    for s in range(y0, y1 + 1):
        for f in range(x0, x1 + 1):
            t = np.float64(img[s, f]) - avg
            dev += t * t
    rmsd = math.sqrt(dev / (nn - 1 if nn > 1 else 1))
    iscale = iscale_in
    if iscale <= 0.0:
        iscale = 55000.0 / max_I if max_I > 0.0 else 1.0
    pscale = pscale_in
    if pscale <= 0.0:
        pscale = 250.0 / (5.0 * rmsd) if rmsd > 0.0 else iscale
    for s in range(y0, y1 + 1):
        for f in range(x0, x1 + 1):
            v = np.float64(img[s, f])
            t = v * iscale + adc
            if t > 65535.0:
                t = 65535.0
            if t < 0.0:
                t = 0.0
            intimg[s, f] = np.uint16(math.floor(np.float32(t + 0.5)))
            p = v * pscale
            if p > 255.0:
                p = 255.0
            if p > -2147483649.0 and p < 2147483648.0:
                pgm[s, f] = np.uint8(np.int64(p) & 0xFF)
            else:
                pgm[s, f] = 0
    stats[0], stats[1], stats[2], stats[3], stats[4], stats[5] = max_I, avg, rms, rmsd, iscale, pscale


_OUT = None


def image_outputs(img: np.ndarray, roi, intfile_scale: float, adc: float, pgm_scale: float,
                  impl: str = "auto"):
    """(max_I, mean, rms, rmsd, intfile_scale, pgm_scale, SMV uint16 image, PGM uint8 image)."""
    global _OUT
    lib = _c_lib(impl)
    S, F = img.shape
    x0, x1 = max(int(roi[0]), 0), min(int(roi[1]), F - 1)
    y0, y1 = max(int(roi[2]), 0), min(int(roi[3]), S - 1)
    if lib is not None:
        from ..backends import camorphous
        return camorphous.outputs(lib, img, x0, x1, y0, y1, intfile_scale, adc, pgm_scale)
    with _LOCK:
        if _OUT is None:
            try:
                import numba
                _OUT = numba.njit(cache=True, error_model="numpy")(_outputs_k)
            except Exception:  # pragma: no cover
                _OUT = _outputs_k
    intimg = np.zeros((S, F), np.uint16)
    pgm = np.zeros((S, F), np.uint8)
    stats = np.zeros(6)
    _OUT(np.ascontiguousarray(img, dtype=np.float32), x0, x1, y0, y1, float(intfile_scale), float(adc),
         float(pgm_scale), intimg, pgm, stats)
    return (*(float(v) for v in stats), intimg, pgm)


def _bin_stats_k(values, rows, nrows, total, mean, dev, count):
    """Per-row mean and rms deviation in float32, sums in the order given (the C's fmean_with_rejection)."""
    for i in range(values.shape[0]):
        r = rows[i]
        if r >= 0:
            total[r] = np.float32(total[r] + values[i])
            count[r] += 1
    for r in range(nrows):
        if count[r] > 0:
            mean[r] = np.float32(total[r] / np.float32(count[r]))
    for i in range(values.shape[0]):
        r = rows[i]
        if r >= 0:
            d = np.float32(abs(np.float32(values[i] - mean[r])))
            dev[r] = np.float32(dev[r] + np.float32(d * d))


_BINS = None


def bin_mean_rmsd(values: np.ndarray, rows: np.ndarray, nrows: int):
    """``(mean, rmsd, count)`` per row of float32 ``values`` grouped by ``rows`` (-1: left out).

    The C ``nonBragg``'s statistics of an ``-stolout`` table row: float32
    running sums in the order of ``values``, mean = sum/n, rmsd =
    sqrt(sum (v - mean)^2 / n) (float32 quotient, double square root);
    rows without values get 0.  (Its rejection is off: a cut of 1e99 sigma.)
    """
    global _BINS
    with _LOCK:
        if _BINS is None:
            try:
                import numba
                _BINS = numba.njit(cache=True, error_model="numpy")(_bin_stats_k)
            except Exception:  # pragma: no cover
                _BINS = _bin_stats_k
    v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    r = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
    if v.shape != r.shape:
        raise ValueError("values and rows differ in size")
    total = np.zeros(nrows, np.float32)
    mean = np.zeros(nrows, np.float32)
    dev = np.zeros(nrows, np.float32)
    count = np.zeros(nrows, np.int64)
    _BINS(v, r, int(nrows), total, mean, dev, count)
    rmsd = np.zeros(nrows, np.float32)
    ok = count > 0
    rmsd[ok] = np.sqrt((dev[ok] / count[ok].astype(np.float32)).astype(np.float32).astype(np.float64)).astype(np.float32)
    return mean, rmsd, count


def _fit_k(S, F, O, pix0, fdet, sdet, beam, distance, close, px, curved, point_pixel, inc, lam, kahn, pol_axis,
           nopolar, img, adc, gain, fluence, r_e_sqr, molecules, mult, div, ext, roi, invalid, outF, outrow):
    """nonBragg -img per pixel: F from the image and the table row, with the last sub-pixel's terms (C order)."""
    sub = px / O
    ix, iy, iz = inc[0], inc[1], inc[2]
    nk = ext.shape[0] - 4
    for s in _prange(S):
        for f in range(F):
            Fdet = sub * (f * O + (O - 1)) + sub / 2.0
            Sdet = sub * (s * O + (O - 1)) + sub / 2.0
            x, y, z = _position(Fdet, Sdet, pix0, fdet, sdet, beam, distance, curved)
            air = math.sqrt(x * x + y * y + z * z)
            dx, dy, dz = x / air, y / air, z / air
            if point_pixel:
                omega = 1.0 / air / air
            else:
                omega = px * px / air / air * close / air
            qx = (dx - ix) / lam
            qy = (dy - iy) / lam
            qz = (dz - iz) / lam
            stol = 0.5 * math.sqrt(qx * qx + qy * qy + qz * qz)
            polar = _polar(ix, iy, iz, dx, dy, dz, pol_axis, kahn, nopolar)
            d32 = np.float32((np.float64(img[s, f]) - adc) / gain)
            sign = 1.0
            if d32 < 0.0:
                sign = -1.0
            base = np.float64(abs(d32)) / polar / omega / fluence / r_e_sqr / molecules
            if mult > 0.0:
                base = base * mult
            else:
                base = base / div
            outF[s, f] = np.float32(sign * math.sqrt(base))
            if f < roi[0] or f > roi[1] or s < roi[2] or s > roi[3] or invalid[s, f]:
                outrow[s, f] = -1
                continue
            lo, hi = 0, nk                    # number of table points <= stol
            while lo < hi:
                m = (lo + hi) // 2
                if ext[m + 2] <= stol:
                    lo = m + 1
                else:
                    hi = m
            nearest = lo + 1
            r = nearest - 2
            if stol > (ext[nearest] + ext[nearest + 1]) / 2.0:
                r += 1
            outrow[s, f] = r


_FIT = None


def fit_pixels(S, F, O, geo, px, curved, point_pixel, inc, lam_m, kahn, pol_axis, nopolar, img, adc, gain,
               fluence, r_e_sqr, molecules, mult, div, knots_m, roi, invalid):
    """(F float32 (S, F), table row int64 (S, F), -1 = left out) of an -img image; the fused form of
    :func:`nanobragg_torch.models.amorphous.image_structure_factors` and its binning."""
    global _FIT
    with _LOCK:
        if _FIT is None:
            try:
                import numba
                _use_numba(numba)
                _FIT = numba.njit(cache=True, parallel=True, error_model="numpy")(_fit_k)
            except Exception:  # pragma: no cover
                _FIT = _fit_k
    f64 = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float64))
    ext = np.concatenate([[-1e99, -1e98], f64(knots_m).reshape(-1), [1e98, 1e99]])
    outF = np.zeros((S, F), np.float32)
    outrow = np.zeros((S, F), np.int64)
    inv = np.zeros((S, F), np.bool_) if invalid is None else np.ascontiguousarray(invalid, dtype=np.bool_)
    _FIT(int(S), int(F), int(O), f64(geo["pix0"]), f64(geo["fdet"]), f64(geo["sdet"]), f64(geo["beam"]),
         float(geo["distance"]), float(geo["close"]), float(px), bool(curved), bool(point_pixel),
         f64(inc).reshape(3), float(lam_m), float(kahn), f64(pol_axis), bool(nopolar),
         np.ascontiguousarray(img, dtype=np.float32), float(adc), float(gain), float(fluence), float(r_e_sqr),
         float(molecules), float(mult), float(div), ext, np.asarray(roi, dtype=np.int64), inv, outF, outrow)
    return outF, outrow

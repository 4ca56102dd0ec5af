"""Fused CPU kernel of the amorphous-scattering sum (the command line's fast path).

The same contract as :func:`nanobragg_torch.models.amorphous.amorphous_image`
(the torch reference and gradient path): one pass per pixel over sub-pixels
and sources in double precision, with the table's per-interval cubics, the
polarization factor and the solid angle, compiled with numba (``parallel``
over detector rows) when numba is importable.  No autograd: the CLI uses it
when nothing requires a gradient; tests check it against the torch path.
"""
from __future__ import annotations

import math
import threading

import numpy as np

_LOCK = threading.Lock()
_JIT = None


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
                        x, y, z = vx, vy, vz
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
                        if nopolar:
                            polar = 1.0
                        else:
                            c2t = ix * dx + iy * dy + iz * dz
                            c2s = c2t * c2t
                            s2s = 1.0 - c2s
                            if kahn != 0.0:
                                # B_in = axis x incident, E_in = incident x B_in (unit vectors)
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
                                polar = 0.5 * (1.0 + c2s - kahn * math.cos(2 * psi) * s2s)
                            else:
                                polar = 0.5 * (1.0 + c2s)
                        Ibg += sign * Fbg * Fbg * polar * omega * w[n]
            if fmap:
                out[s, f] = Fbg
            else:
                out[s, f] = Ibg * scale


_prange = range


def kernel():
    """The compiled kernel (numba, parallel), or the plain-Python body when numba is missing."""
    global _JIT, _prange
    with _LOCK:
        if _JIT is None:
            try:
                import numba
                _prange = numba.prange
                g = globals()
                g["_prange"] = numba.prange
                _JIT = numba.njit(cache=True, parallel=True, error_model="numpy")(_render_k)
            except Exception:  # pragma: no cover - numba missing or broken
                _JIT = _render_k
        return _JIT


def render(S, F, O, geo, px, curved, point_pixel, inc, lam_A, w, kahn, pol_axis, nopolar, table,
           scale, roi, fmap) -> np.ndarray:
    """float32 image (S, F); all vector inputs numpy float64."""
    out = np.zeros((S, F), dtype=np.float32)
    f64 = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float64))
    kernel()(int(S), int(F), int(O), f64(geo["pix0"]), f64(geo["fdet"]), f64(geo["sdet"]), f64(geo["beam"]),
             float(geo["distance"]), float(geo["close"]), float(px), bool(curved), bool(point_pixel),
             f64(inc).reshape(-1, 3), f64(lam_A), f64(w), float(kahn), f64(pol_axis), bool(nopolar),
             f64(table.stol), f64(table.coefficients), f64(table.origins), float(scale),
             np.asarray(roi, dtype=np.int64), bool(fmap), out)
    return out

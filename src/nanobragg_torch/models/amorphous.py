"""Amorphous scattering (water, air, ice ...): the physics of the reference ``nonBragg`` program.

A sample of ``molecules`` identical scatterers, each with an isotropic
structure factor F(sin(theta)/lambda) read from a table, scatters into a
pixel of solid angle omega

    I = r_e^2 * fluence * molecules * sum_sources w * sign(F) F^2 * polar * omega / steps

(``steps`` = sources x oversample^2; the sum also runs over the sub-pixels).
Between table points F is the C's four-point (cubic) Lagrange interpolation;
the table is extended at both ends by two far-away points, which makes the
interpolation linear below the first two and above the last two points (and
quadratic next to them), exactly as the C's padding does in the limit.

:class:`StolTable` holds the table (and checks it), :class:`AmorphousSample`
the sample (an ``nn.Module``: thickness/width/height in m, density in
g/cm^3, molecular weight in g/mol; all may require grad), and
:func:`amorphous_image` renders it on a :class:`~nanobragg_torch.models.Detector`
lit by a :class:`~nanobragg_torch.models.Beam` (their geometry, sources,
divergence, dispersion and polarization; differentiable in the detector
geometry and the wavelength).  :class:`AmorphousScatter` is the module form.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..physics.polarization import polarization_factor
from ..physics.rotation import rotate_axis
from .base import as_tensor

AVOGADRO = 6.02214179e23
R_E_SQR = 7.94079248018965e-30

#: what one unit of the table's first column is, in 1/Angstrom of sin(theta)/lambda
STOL_UNITS = {"stol": 1.0, "4stol": 0.25, "Q": 1.0 / (4.0 * math.pi)}


class StolTableError(ValueError):
    """A structure-factor table that cannot be used (message names the file and line)."""


class StolTable:
    """F against sin(theta)/lambda, with the C's padding and per-interval cubic coefficients.

    ``stol``: (n,) strictly increasing, in 1/Angstrom (sin(theta)/lambda);
    ``F``: (n,) structure factors (electrons).  ``coefficients`` (n+1, 4) and
    ``origins`` (n+1,) give, for interval k (the C's ``nearest`` = k+1), the
    cubic F = c0 + c1 t + c2 t^2 + c3 t^3 with t = stol - origin.
    """

    def __init__(self, stol, F, name: str = "table"):
        if any(isinstance(v, torch.Tensor) and v.requires_grad for v in (stol, F)):
            raise ValueError("StolTable: the table is fixed (numpy; its cubics are precomputed): stol and F "
                             "cannot carry a gradient; pass them detached")
        s = np.asarray(stol, dtype=np.float64).reshape(-1)
        f = np.asarray(F, dtype=np.float64).reshape(-1)
        if s.size == 0:
            raise StolTableError(f"{name}: no data")
        if s.shape != f.shape:
            raise StolTableError(f"{name}: stol and F differ in length")
        if not np.all(np.isfinite(s)):
            raise StolTableError(f"{name}: stol values must be finite")
        d = np.diff(s)
        if np.any(d == 0):
            i = int(np.nonzero(d == 0)[0][0])
            raise StolTableError(f"{name}: duplicated stol value {s[i]:g} (rows {i + 1} and {i + 2})")
        if np.any(d < 0):
            i = int(np.nonzero(d < 0)[0][0])
            raise StolTableError(f"{name}: stol values must increase ({s[i]:g} then {s[i + 1]:g}, rows "
                                 f"{i + 1} and {i + 2})")
        if np.any(np.isinf(f)):
            i = int(np.nonzero(np.isinf(f))[0][0])
            raise StolTableError(f"{name}: F must be finite (row {i + 1})")
        # the C treats missing F values as zero
        f = np.where(np.isnan(f), 0.0, f)
        self.name = name
        self.stol = s
        self.F = f
        self.coefficients, self.origins = _interval_cubics(s, f)

    @classmethod
    def read(cls, path: str, units: str = "stol") -> "StolTable":
        """Read a two-column text file (stol F); blank lines and ``#`` comment lines are skipped.

        ``units``: "stol" (sin(theta)/lambda in 1/A), "4stol" (4 sin(theta)/lambda,
        the C's ``-4stol``) or "Q" (4 pi sin(theta)/lambda, ``-Q``).  A line whose
        first value is not a number is an error naming the file and line.
        """
        from ..io.errors import InputFileError
        from ..io.textcolumns import read_columns
        try:
            rows = read_columns(path, 2, min_fields=1, what="stol table", layout="stol F")
        except InputFileError as e:
            raise StolTableError(str(e)) from None
        if len(rows) == 0:
            raise StolTableError(f"{path}: no data in the table")
        a = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
        if units not in STOL_UNITS:
            raise ValueError(f"units must be one of {sorted(STOL_UNITS)}, got {units!r}")
        return cls(a[:, 0] * STOL_UNITS[units], a[:, 1], name=path)

    def __len__(self):
        return self.stol.size

    def interpolate(self, stol: torch.Tensor) -> torch.Tensor:
        """F at ``stol`` (any shape, 1/A); differentiable in ``stol``."""
        dtype, dev = stol.dtype, stol.device
        knots = torch.as_tensor(self.stol, dtype=dtype, device=dev)
        k = torch.searchsorted(knots, stol.detach().contiguous(), right=True)   # 0..n  (the C's nearest - 1)
        coef = torch.as_tensor(self.coefficients, dtype=dtype, device=dev)
        org = torch.as_tensor(self.origins, dtype=dtype, device=dev)
        flat = k.reshape(-1)
        c = coef.index_select(0, flat).reshape(k.shape + (4,))
        t = stol - org.index_select(0, flat).reshape(k.shape)
        return ((c[..., 3] * t + c[..., 2]) * t + c[..., 1]) * t + c[..., 0]


def _interval_cubics(s: np.ndarray, f: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Monomial coefficients of the C's polint on each interval, with the padding points far away.

    Extended index e: 0, 1 (far below), 2..n+1 (data), n+2, n+3 (far above).
    Interval k = 0..n uses the points e = k..k+3 (the C's nearest-1 .. nearest+2);
    a far point's Lagrange factor tends to 1 and its own term to 0.
    """
    n = s.size
    e = np.arange(n + 1)[:, None] + np.arange(4)[None, :]       # (K, 4) extended indices
    real = (e >= 2) & (e <= n + 1)
    di = np.clip(e - 2, 0, n - 1)
    x = np.where(real, s[di], 0.0)
    y = np.where(real, f[di], 0.0)
    # origin: the first real point of the interval's pair (k+1 or k+2 in extended indices)
    org = np.where(real[:, 1], x[:, 1], x[:, 2])
    t = x - org[:, None]
    K = e.shape[0]
    coef = np.zeros((K, 4))
    for i in range(4):
        # product over j != i of (t - t_j) / (t_i - t_j), over real j only
        poly = np.zeros((K, 4))
        poly[:, 0] = 1.0
        den = np.ones(K)
        for j in range(4):
            if j == i:
                continue
            rj = real[:, j]
            # multiply poly by (t - t_j) where rj, else by 1
            shifted = np.zeros_like(poly)
            shifted[:, 1:] = poly[:, :-1]
            mult = shifted - t[:, j:j + 1] * poly
            poly = np.where(rj[:, None], mult, poly)
            den = np.where(rj, den * (t[:, i] - t[:, j]), den)
        w = np.where(real[:, i], y[:, i] / np.where(den == 0, 1.0, den), 0.0)
        coef += poly * w[:, None]
    return coef, org


class AmorphousSample(torch.nn.Module):
    """The amorphous sample: its size, density and molecular weight, and its F(stol) table.

    Args (floats or tensors; tensors may require grad):
        table: :class:`StolTable`.
        thickness: along the beam, m (default 1e-4; the C's ``-thickness`` in mm / 1000).
        width, height: m (default 1e-4); clipped to ``beamsize`` (m) when given, as the C does.
        density: g/cm^3 (default 1); molecular_weight: g/mol (default 18).
        molecules: when given (not None), overrides the density (the C's ``-molecules``).
    """

    def __init__(self, table: StolTable, thickness=1e-4, width=1e-4, height=1e-4, density=1.0,
                 molecular_weight=18.0, molecules=None, beamsize: Optional[float] = None):
        super().__init__()
        self.table = table
        for name, v in (("thickness", thickness), ("width", width), ("height", height),
                        ("density", density), ("molecular_weight", molecular_weight)):
            self._put(name, v)
        self.molecules_given = molecules
        self.beamsize = beamsize

    def _put(self, name, v):
        if isinstance(v, torch.nn.Parameter):
            self.register_parameter(name, v)
        elif isinstance(v, torch.Tensor):
            self.register_buffer(name, v)
        else:
            object.__setattr__(self, name, float(v))

    def clipped_size(self):
        """(thickness, width, height) after clipping by the beam (m)."""
        w, h = self.width, self.height
        if self.beamsize is not None and self.beamsize >= 0:
            b = self.beamsize
            w = torch.clamp(w, max=b) if isinstance(w, torch.Tensor) else min(w, b)
            h = torch.clamp(h, max=b) if isinstance(h, torch.Tensor) else min(h, b)
        return self.thickness, w, h

    def molecules(self):
        """Number of scatterers in the beam: volume * density * N_A / MW."""
        x, y, z = self.clipped_size()
        if self.molecules_given:
            return self.molecules_given * (x * y * z) / (x * y * z)
        return x * y * z * (self.density * 1e6) * AVOGADRO / self.molecular_weight

    def forward(self, detector, beam, **kw):
        return amorphous_image(self, detector, beam, **kw)


def _no_grad_arg(func: str, name: str, value) -> None:
    """One-line refusal of a tensor that requires grad where the value cannot carry a gradient."""
    if isinstance(value, torch.Tensor) and value.requires_grad:
        raise ValueError(f"{func}: {name} cannot carry a gradient (it is a count or a fixed input); "
                         f"pass a plain number or a detached tensor")


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def _frame(detector, beam, oversample, dtype, device):
    """The set-up both the renderer and the -img inversion start from: device, detector settings,
    sources, geometry, detector size, oversampling, pixel and sub-pixel size."""
    dev = device if device is not None else detector.device
    cfg = detector.settings
    src = beam.sources(dtype, dev)
    geo = detector.geometry(beam.beam_vector_unit(dtype, dev), dtype, dev)
    O = max(int(oversample), 1)
    px = detector.value("pixel_size", dtype, dev)
    return dev, cfg, src, geo, cfg.spixels, cfg.fpixels, O, px, px / O


def amorphous_image(sample: AmorphousSample, detector, beam, *, oversample: int = 1,
                    source_weights: Optional[torch.Tensor] = None, fmap: bool = False,
                    roi: Optional[Sequence[int]] = None, dtype=torch.float64, device=None,
                    rows_per_chunk: Optional[int] = None, backend: str = "torch") -> torch.Tensor:
    """Photons per pixel (spixels, fpixels) scattered by ``sample`` onto ``detector``.

    ``detector``: :class:`~nanobragg_torch.models.Detector` (its geometry:
    pivots, rotations, two-theta, ``curved``, ``point_pixel``; no sensor
    thickness); ``beam``: :class:`~nanobragg_torch.models.Beam` (fluence,
    polarization, its sources).  ``oversample``: sub-pixels per pixel side.
    ``source_weights`` (S,): per-source intensity (default 1; a source file's
    fourth column).  ``fmap``: return F of the last sub-pixel and source
    instead (the C's ``-Fmap``).  ``roi`` (xmin, xmax, ymin, ymax), inclusive:
    pixels outside are 0.  Differentiable in every float tensor of the sample,
    detector and beam (geometry, wavelength, fluence, polarization).

    ``backend``: "torch" (the reference and gradient path, any device and
    dtype), "c" or "numba" (the fused CPU kernel of
    :mod:`nanobragg_torch.physics.amorphous_kernel`, built in C or with numba:
    double precision, no autograd, returns float32) or "auto" (the fused
    kernel on the CPU when nothing requires grad: C when it can be built,
    else numba).
    """
    _no_grad_arg("amorphous_image", "oversample", oversample)
    dev, cfg, src, geo, S, F, O, px, sub = _frame(detector, beam, oversample, dtype, device)
    inc = src.incident                                   # (N, 3)
    lam_A = src.wavelength * 1e10                         # (N,) Angstrom
    nsrc = inc.shape[0]
    w = torch.ones(nsrc, dtype=dtype, device=dev) if source_weights is None else \
        torch.as_tensor(source_weights, dtype=dtype, device=dev)
    kahn = beam.value("polarization", dtype, dev)
    polar_axis = beam.polar_vector_unit(dtype, dev)
    fluence = beam.value("fluence", dtype, dev)
    steps = nsrc * O * O
    scale = R_E_SQR * fluence * as_tensor(sample.molecules(), dtype, dev) / steps
    table = sample.table
    # everything the numba kernel takes as plain numbers
    leaves = [geo.pix0, geo.fdet, geo.sdet, src.incident, src.wavelength, kahn, polar_axis, fluence, px, w,
              as_tensor(sample.molecules(), dtype, dev)]
    needs_grad = any(isinstance(t, torch.Tensor) and t.requires_grad for t in leaves)
    if backend == "auto":
        backend = "fused" if (torch.device(dev).type == "cpu" and not needs_grad) else "torch"
    if backend in ("numba", "c", "fused"):
        if needs_grad:
            raise ValueError(f"amorphous_image: backend={backend!r} has no gradients and an input requires grad; "
                             "use backend='torch' (or 'auto')")
        from ..physics import amorphous_kernel
        npy = lambda t: t.detach().to("cpu", torch.float64).numpy()
        roi4 = tuple(roi) if roi is not None else (0, F - 1, 0, S - 1)
        img = amorphous_kernel.render(
            S, F, O, dict(pix0=npy(geo.pix0), fdet=npy(geo.fdet), sdet=npy(geo.sdet), beam=npy(geo.beam_vector),
                          distance=float(geo.distance), close=float(geo.close_distance)),
            float(px), cfg.curved, cfg.point_pixel, npy(inc), npy(lam_A), npy(w), float(kahn), npy(polar_axis),
            beam.nopolar, table, float(scale), roi4, fmap, impl="auto" if backend == "fused" else backend)
        return torch.from_numpy(img)
    if backend != "torch":
        raise ValueError(f"backend must be 'torch', 'c', 'numba' or 'auto', got {backend!r}")
    ar = torch.arange(O, dtype=dtype, device=dev)
    fcoord = (sub * (torch.arange(F, dtype=dtype, device=dev)[:, None] * O + ar) + sub / 2.0).reshape(-1)  # (F*O,)
    if rows_per_chunk is None:
        rows_per_chunk = max(1, int(2 ** 19 // max(F * O * O * max(nsrc, 1), 1)))
    out_rows = []
    for r0 in range(0, S, rows_per_chunk):
        r1 = min(S, r0 + rows_per_chunk)
        srows = torch.arange(r0, r1, dtype=dtype, device=dev)
        scoord = (sub * (srows[:, None] * O + ar) + sub / 2.0).reshape(-1)                   # (R*O,)
        pos = (scoord[:, None, None] * geo.sdet + fcoord[None, :, None] * geo.fdet + geo.pix0)  # (R*O, F*O, 3)
        if cfg.curved:
            v = geo.distance * geo.beam_vector
            newv = rotate_axis(v.expand_as(pos), geo.sdet, pos[..., 1] / geo.distance)
            pos = rotate_axis(newv, geo.fdet, pos[..., 2] / geo.distance)
        air = torch.linalg.vector_norm(pos, dim=-1)                                           # (R*O, F*O)
        d = pos / air[..., None]
        if cfg.point_pixel:
            omega = 1.0 / (air * air)
        else:
            omega = px * px / (air * air) * geo.close_distance / air
        acc = torch.zeros_like(air)
        Fv = None
        for n in range(nsrc):
            i = inc[n]
            diff = d - i
            stol = 0.5 * torch.linalg.vector_norm(diff, dim=-1) / lam_A[n]
            Fv = table.interpolate(stol)
            if beam.nopolar:
                pol = 1.0
            else:
                pol = polarization_factor(kahn, i, d, polar_axis)
            acc = acc + torch.sign(Fv) * Fv * Fv * pol * w[n]
        acc = acc * omega
        R = r1 - r0
        if fmap:
            img = Fv.reshape(R, O, F, O)[:, -1, :, -1]
        else:
            img = acc.reshape(R, O, F, O).sum((1, 3)) * scale
        out_rows.append(img)
    image = torch.cat(out_rows, 0)
    if roi is not None:
        xmin, xmax, ymin, ymax = (int(v) for v in roi)
        fi = torch.arange(F, device=dev)
        si = torch.arange(S, device=dev)
        keep = ((fi >= xmin) & (fi <= xmax))[None, :] & ((si >= ymin) & (si <= ymax))[:, None]
        image = torch.where(keep, image, torch.zeros_like(image))
    return image


class AmorphousScatter(torch.nn.Module):
    """Module form of :func:`amorphous_image`: holds the sample, detector and beam models."""

    def __init__(self, sample: AmorphousSample, detector, beam, **options):
        super().__init__()
        self.sample, self.detector, self.beam = sample, detector, beam
        self.options = options

    def forward(self) -> torch.Tensor:
        return amorphous_image(self.sample, self.detector, self.beam, **self.options)


# ---------------------------------------------------------------------------
# the inverse: F against stol from an image (nonBragg -img / -stolout)
# ---------------------------------------------------------------------------
def last_subpixel_terms(detector, beam, *, oversample: int = 1, dtype=torch.float64, device=None):
    """``(stol, polar, omega)`` (each (spixels, fpixels)) of every pixel's last sub-pixel and last source.

    These are the values the C ``nonBragg`` holds when it turns a pixel of an
    ``-img`` image back into a structure factor: its loops leave ``stol``
    (sin(theta)/lambda, here in 1/m as the C's), the polarization factor and the
    solid angle of the last sub-pixel (last in both directions) and, for
    ``stol`` and ``polar``, of the last source.  Arithmetic in the C's order.
    Differentiable in the detector geometry and the wavelength.
    """
    dev, cfg, src, geo, S, F, O, px, sub = _frame(detector, beam, oversample, dtype, device)
    fc = sub * (torch.arange(F, dtype=dtype, device=dev) * O + (O - 1)) + sub / 2.0
    sc = sub * (torch.arange(S, dtype=dtype, device=dev) * O + (O - 1)) + sub / 2.0
    pos = fc[None, :, None] * geo.fdet + sc[:, None, None] * geo.sdet + geo.pix0                # (S, F, 3)
    if cfg.curved:
        v = geo.distance * geo.beam_vector
        newv = rotate_axis(v.expand_as(pos), geo.sdet, pos[..., 1] / geo.distance)
        pos = rotate_axis(newv, geo.fdet, pos[..., 2] / geo.distance)
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    air = torch.sqrt(x * x + y * y + z * z)
    d = pos / air[..., None]
    if cfg.point_pixel:
        omega = 1.0 / air / air
    else:
        omega = px * px / air / air * geo.close_distance / air
    inc = src.incident[-1]
    lam = src.wavelength[-1]
    q = (d - inc) / lam
    stol = 0.5 * torch.sqrt(q[..., 0] * q[..., 0] + q[..., 1] * q[..., 1] + q[..., 2] * q[..., 2])
    if beam.nopolar:
        polar = torch.ones_like(stol)
    else:
        polar = polarization_factor(beam.value("polarization", dtype, dev), inc, d,
                                    beam.polar_vector_unit(dtype, dev))
    return stol, polar, omega


def image_structure_factors(image, sample: AmorphousSample, detector, beam, *, oversample: int = 1,
                            adc: float = 40.0, gain: float = 1.0, source_weights=None, c_scale: bool = False):
    """F of every pixel of a measured ``image`` (spixels, fpixels), as the C ``nonBragg -img`` derives it.

    ``F = sign(D) sqrt(|D| / polar / omega / fluence / r_e^2 / molecules / w)`` with
    ``D = (pixel - adc) / gain`` rounded to float32, polar and omega of
    :func:`last_subpixel_terms` and ``w`` the mean source weight (1 without
    ``source_weights``): the inverse of :func:`amorphous_image`, whose pixel is
    the mean over its sub-pixels and sources.  ``c_scale=True`` is the C's
    formula, ``w = 1 / steps`` (``steps`` = sources x oversample^2), which makes F
    sqrt(steps) times too large when there are several sources or sub-pixels.
    Returns ``(F float32 numpy (S, F), stol float64 numpy (S, F) in 1/A)``.
    """
    for name, v in (("image", image), ("oversample", oversample), ("adc", adc), ("gain", gain)):
        _no_grad_arg("image_structure_factors", name, v)
    img = np.asarray(image)
    cfg = detector.settings
    if img.shape != (cfg.spixels, cfg.fpixels):
        raise ValueError(f"image is {img.shape[1]}x{img.shape[0]} pixels, the detector "
                         f"{cfg.fpixels}x{cfg.spixels}")
    with torch.no_grad():
        stol, polar, omega = last_subpixel_terms(detector, beam, oversample=oversample)
        fluence = float(beam.value("fluence", torch.float64, detector.device))
        n = beam.sources(torch.float64).incident.shape[0]
    O = max(int(oversample), 1)
    steps = n * O * O
    molecules = float(as_tensor(sample.molecules(), torch.float64, "cpu"))
    dev32 = ((img.astype(np.float64) - float(adc)) / float(gain)).astype(np.float32)
    sign = np.where(dev32 < 0.0, np.float32(-1.0), np.float32(1.0)).astype(np.float64)
    mag = np.abs(dev32).astype(np.float64)
    base = mag / polar.numpy() / omega.numpy() / fluence / R_E_SQR / molecules
    if c_scale:
        Fpix = sign * np.sqrt(base * steps)
    else:
        wbar = 1.0 if source_weights is None else float(np.mean(np.asarray(source_weights, dtype=np.float64)))
        Fpix = sign * np.sqrt(base / wbar)
    return Fpix.astype(np.float32), stol.numpy() / 1e10


def image_stol_profile(image, sample: AmorphousSample, detector, beam, *, oversample: int = 1,
                       adc: float = 40.0, gain: float = 1.0, invalid=None, roi: Optional[Sequence[int]] = None,
                       source_weights=None, c_scale: bool = False, backend: str = "torch"):
    """The table the C ``nonBragg -img FILE -stolout OUT`` writes: mean F of the pixels nearest each table point.

    Every valid pixel (inside ``roi`` (xmin, xmax, ymin, ymax, inclusive) and
    not marked in the bool (S, F) array ``invalid``) goes to the table point of
    ``sample.table`` nearest its stol (:func:`last_subpixel_terms`; a pixel
    beyond the last point goes to it, one below the first to the first), and
    each point gets the mean and rms deviation of its pixels' F
    (:func:`image_structure_factors`, with ``source_weights`` and ``c_scale``)
    in the C's float32 arithmetic (sums in raster order).  Returns a dict: ``stol`` (n,) the table's points (1/A),
    ``mean``, ``rmsd`` (n,) float32 (0 where no pixel), ``count`` (n,) int,
    ``F`` (S, F) float32 and ``row`` (S, F) int (the point of each pixel, -1
    for invalid ones).  ``backend``: "torch" (:func:`image_structure_factors`,
    any device) or "numba" (the fused CPU loop of
    :func:`nanobragg_torch.physics.amorphous_kernel.fit_pixels`, the command
    line's: no (S, F, 3) temporaries; the same numbers).
    """
    from ..physics.amorphous_kernel import bin_mean_rmsd, fit_pixels
    for name, v in (("image", image), ("oversample", oversample), ("adc", adc), ("gain", gain)):
        _no_grad_arg("image_stol_profile", name, v)
    knots = np.asarray(sample.table.stol, dtype=np.float64) * 1e10
    nk = knots.size
    cfg = detector.settings
    S, Fn = cfg.spixels, cfg.fpixels
    if np.shape(image) != (S, Fn):
        raise ValueError(f"image is {np.shape(image)[1]}x{np.shape(image)[0]} pixels, the detector {Fn}x{S}")
    roi4 = (0, Fn - 1, 0, S - 1) if roi is None else tuple(int(v) for v in roi)
    if backend == "numba":
        with torch.no_grad():
            src = beam.sources(torch.float64)
            geo = detector.geometry(beam.beam_vector_unit(torch.float64), torch.float64)
            npy = lambda t: t.detach().to("cpu", torch.float64).numpy()
            O = max(int(oversample), 1)
            steps = src.incident.shape[0] * O * O
            wbar = 1.0 if source_weights is None else float(np.mean(np.asarray(source_weights, dtype=np.float64)))
            Fpix, row = fit_pixels(
                S, Fn, O, dict(pix0=npy(geo.pix0), fdet=npy(geo.fdet), sdet=npy(geo.sdet),
                               beam=npy(geo.beam_vector), distance=float(geo.distance),
                               close=float(geo.close_distance)),
                float(detector.value("pixel_size", torch.float64)), cfg.curved, cfg.point_pixel,
                npy(src.incident[-1]), float(src.wavelength[-1]), float(beam.value("polarization", torch.float64)),
                npy(beam.polar_vector_unit(torch.float64)), beam.nopolar, np.asarray(image, dtype=np.float32),
                adc, gain, float(beam.value("fluence", torch.float64)), R_E_SQR,
                float(as_tensor(sample.molecules(), torch.float64, "cpu")), float(steps) if c_scale else 0.0,
                wbar, knots, roi4, invalid)
    elif backend == "torch":
        Fpix, stol_A = image_structure_factors(image, sample, detector, beam, oversample=oversample,
                                               adc=adc, gain=gain, source_weights=source_weights, c_scale=c_scale)
        stol_m = stol_A * 1e10
        ext = np.concatenate([[-1e99, -1e98], knots, [1e98, 1e99]])
        nearest = np.searchsorted(knots, stol_m, side="right") + 1          # the C's nearest (extended index)
        mid = (ext[nearest] + ext[nearest + 1]) / 2.0
        row = nearest + (stol_m > mid) - 2                                  # 0 .. n-1
        xmin, xmax, ymin, ymax = roi4
        fi, si = np.arange(Fn), np.arange(S)
        valid = ((fi >= xmin) & (fi <= xmax))[None, :] & ((si >= ymin) & (si <= ymax))[:, None]
        if invalid is not None:
            valid &= ~np.asarray(invalid, dtype=bool)
        row = np.where(valid, row, -1).astype(np.int64)
    else:
        raise ValueError(f"backend must be 'torch' or 'numba', got {backend!r}")
    mean, rmsd, count = bin_mean_rmsd(Fpix.reshape(-1), row.reshape(-1), nk)
    return dict(stol=np.asarray(sample.table.stol, dtype=np.float64).copy(), mean=mean, rmsd=rmsd,
                count=count, F=Fpix, row=row)

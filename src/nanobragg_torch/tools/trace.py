"""Per-pixel trace: every intermediate quantity of one pixel, as the engine computes it.

``nanoBragg ... -trace_pixel S F [--trace-json FILE]`` prints, before the image
is rendered, one line per quantity::

    TRACE_PY:<name> <values>

Values are written with ``%.15g`` (integers with ``%d``), vectors as three
space-separated numbers.  Where the instrumented reference program
(``TRACE_C:`` lines of the parity build of nanoBragg.c) prints a quantity, the
same name, the same units and the same loop conditions are used, so that the
two traces line up quantity by quantity (see ``compare-traces``):

* once per sub-pixel and detector layer, for source 0: ``pix0_vector_meters``,
  ``fdet_vec``, ``sdet_vec``, ``pixel_pos_meters``, ``R_distance_meters``,
  ``omega_pixel_sr``, ``close_distance_meters``, ``obliquity_factor``,
  ``diffracted_vec``, ``incident_vec``, ``lambda_meters``, ``lambda_angstroms``,
  ``scattering_vec_A_inv`` (the C's name; the value is (d - i)/lambda with
  lambda in metres, i.e. in 1/m, exactly as the C prints it);
* for phi step 0, mosaic domain 0 of the same (sub-pixel, layer, source 0),
  unless cut by ``-dmin``: ``rot_a_angstroms`` ... ``rot_c_angstroms``,
  ``rot_a_star_A_inv`` ... (as in the C: the reciprocal vectors the spot-shape
  factors use, which are *not* rotated), ``hkl_frac``, ``hkl_rounded``,
  ``F_latt_a``, ``F_latt_b``, ``F_latt_c``, ``F_latt`` (parallelepiped only),
  ``F_cell`` (when the term is evaluated, i.e. F_latt != 0 or -water);
* ``TRACE_PY_PHI phi_tic=.. phi_deg=.. k_frac=.. F_latt_b=.. F_latt=..`` for
  every phi step (mosaic domain 0, source 0; parallelepiped only) and a
  ``TRACE_PY_SOURCE2:`` block for source 2, like the C's ``TRACE_C_PHI`` and
  ``TRACE_C_SOURCE2`` lines;
* once per pixel: ``I_before_scaling``, ``r_e_meters``, ``r_e_sqr``,
  ``fluence_photons_per_m2``, ``steps``, ``oversample_thick|polar|omega``,
  ``capture_fraction``, ``polar``, ``omega_pixel``, ``cos_2theta``,
  ``I_pixel_final``, ``floatimage_accumulated`` (the value as stored in the
  4-byte float image).

Further lines carry quantities the default C build does not print: the
detector geometry, stage by stage as the geometry step computed it
(``DetectorGeometry.stages``), under the names of the C's ``-DTRACING`` build:
``detector_convention``, ``angles_rad``, ``initial_fdet`` ..., ``fdet_after_rotz``
... (after the x, y, z rotations), ``twotheta_axis``, ``fdet_after_twotheta`` ...,
the pivot inputs ``Fbeam_m``/``Sbeam_m``/``distance_m`` and the summands
``term_fast``/``term_slow``/``term_beam`` of the origin (beam pivot) or
``Fclose_m``/``Sclose_m``/``close_distance_m``/``ratio``/``distance_m``,
``term_*_before_rot``, ``pix0_before_rotation``, ``pix0_after_rotz``,
``pix0_after_twotheta`` (sample pivot), and ``pix0_vector``; then the final
basis (``fdet_vector`` ...) and the recomputed ``*_final*`` values.  (Not
reproduced: that build's ``beam_center_m``, printed in units of km, its
``Rx``/``Ry``/``Rz``/``R_total``, which it rebuilds for logging only, and, for
the beam pivot, its second print of the final basis under the ``*_after_rotz``
names.)  Per sub-pixel: ``stol``, the solid
angle/capture fraction/polarization of that very sub-pixel and the cached values
the C has at that point, other sources (``<name>@src<s>``) and, for every phi
step and mosaic domain of source 0, the lattice actually used
(``rot_a_angstroms@phi<p>_mos<m>``, ..., truly rotated reciprocal vectors
``a_star_A_inv@phi<p>_mos<m>``, ...), ``hkl_frac@..``, ``hkl_rounded@..``,
``F_latt@..`` (and its factors), ``F_cell@..`` and the term ``I_contribution@..``.

``--trace-json FILE`` writes all values, for every layer, sub-pixel, source,
phi step and mosaic domain, as JSON (see :func:`compute_trace`).

Everything is computed with the engine's own functions (``_subpixel_positions``,
``miller_indices``, ``lattice_factor``, ``structure_factor`` and the physics
modules), and the pixel sum follows the reference program's loop literally
(sequential accumulation, the caching rules of polarization, solid angle and
capture fraction, ``-dmin`` cuts, the interpolation switch-off and the phi
carry-over state of the pixels rendered before this one).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .. import engine as _engine
from ..physics.lattice import lattice_square as _lattice_square

RTD = 180.0 / math.pi
TRACE_FORMAT_VERSION = 1


class TraceError(ValueError):
    """The requested pixel cannot be traced (outside the detector)."""


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return "%d" % int(v)
    if isinstance(v, (int, np.integer)):
        return "%d" % int(v)
    if isinstance(v, (float, np.floating)):
        return "%.15g" % float(v)
    if isinstance(v, (list, tuple)):
        return " ".join(_fmt(x) for x in v)
    return str(v)


def _vec(t) -> List[float]:
    return [float(x) for x in t.detach().reshape(-1).cpu().tolist()]


def _state_before(pb, n_before: int, max_elements: int):
    """The engine's loop-carried state (interpolation switch, phi carry-over) before pixel ``n_before``.

    Only needed when either can change; the pixels before the traced one are
    then rendered (and thrown away) to find it, exactly as the engine does.
    """
    state = _engine.RenderState(interpolate=pb.interpolate)
    needs = pb.interpolate or pb.lattices_first is not None
    if n_before == 0 or not needs:
        return state
    choose = getattr(_engine, "choose_chunk", None)
    chunk = choose(pb, max_elements) if choose is not None else 4096
    for start in range(0, n_before, chunk):
        if not state.interpolate and (pb.lattices_first is None or state.first_done):
            break
        pix = pb.pixels[start:min(start + chunk, n_before)]
        _engine.render_chunk(pb, pix, state)
    return state


def _header(st, prep, pb) -> Dict[str, Any]:
    """Geometry and set-up values, printed once.

    ``Fbeam_m``/``Sbeam_m`` (beam pivot) or ``Fclose_m``/``Sclose_m``/
    ``close_distance_m``/``ratio`` (sample pivot) and ``distance_m`` are the
    values the detector is positioned from, before the pivot -- what the C's
    ``-DTRACING`` build prints under these names; ``pix0_vector`` is the final
    origin (also printed there).  The values recomputed from the rotated
    detector carry a ``_final`` suffix.
    """
    h: Dict[str, Any] = {}
    det = st.detector if st is not None else None
    geo = prep.geometry if prep is not None else None
    if det is not None:
        h["detector_convention"] = str(det.convention).upper()
        h["detector_pivot"] = "SAMPLE" if det.pivot == "sample" else "BEAM"
    # the detector's construction, stage by stage, as the geometry step computed it
    # (the names of the C's -DTRACING build: angles_rad, initial_fdet, fdet_after_rotz,
    # twotheta_axis, fdet_after_twotheta, term_fast ... or term_*_before_rot, pix0_before_rotation,
    # pix0_after_rotz, pix0_after_twotheta)
    for name, t in (getattr(geo, "stages", None) or {}).items():
        h[name] = _vec(t)
    h["fdet_vector"] = _vec(pb.fdet)
    h["sdet_vector"] = _vec(pb.sdet)
    h["odet_vector"] = _vec(pb.odet)
    h["beam_vector"] = _vec(pb.beam_vector)
    h["polar_vector"] = _vec(pb.polar_vector)
    if det is not None and geo is not None:
        ratio = float(geo.ratio)
        close_in = (float(det.close_distance) if det.close_distance is not None
                    else abs(ratio * float(det.distance)))
        if det.pivot == "sample":
            h["Fclose_m"] = float(det.Fclose)
            h["Sclose_m"] = float(det.Sclose)
            h["close_distance_m"] = close_in
            h["ratio"] = ratio
            h["distance_m"] = close_in / ratio
        else:
            h["Fbeam_m"] = float(det.Fbeam)
            h["Sbeam_m"] = float(det.Sbeam)
            h["distance_m"] = close_in / ratio
    h["pix0_vector"] = _vec(pb.pix0)
    h["distance_final_m"] = float(pb.distance)
    h["close_distance_final_m"] = float(pb.close_distance)
    if geo is not None:
        h["ratio_final"] = float(geo.ratio)
        h["Fbeam_final_m"] = float(geo.Fbeam)
        h["Sbeam_final_m"] = float(geo.Sbeam)
        h["Fclose_final_m"] = float(geo.Fclose)
        h["Sclose_final_m"] = float(geo.Sclose)
    if st is not None:
        ax = np.asarray(st.crystal.spindle_axis, dtype=float)
        h["spindle_vector"] = [float(x) for x in ax / np.linalg.norm(ax)]
    h["pixel_size_m"] = float(pb.pixel_size)
    h["fpixels"] = int(pb.fpixels)
    h["spixels"] = int(pb.spixels)
    h["oversample"] = int(pb.oversample)
    h["thicksteps"] = int(pb.thicksteps)
    h["detector_thickstep_m"] = float(pb.thickstep)
    h["detector_mu"] = float(pb.mu)
    h["sources"] = int(pb.incident.shape[0])
    h["lattice_orientations"] = int(pb.lattices.shape[0])
    if st is not None:
        h["phisteps"] = int(st.crystal.phisteps)
        h["mosaic_domains"] = 1 if st.crystal.mosaic_umats is None else int(len(st.crystal.mosaic_umats))
    h["Na_Nb_Nc"] = [float(pb.Na), float(pb.Nb), float(pb.Nc)]
    h["xtal_shape"] = pb.shape
    h["default_F"] = float(pb.default_F)
    h["hkls"] = int(pb.hkls)
    h["dmin_m"] = float(pb.dmin)
    h["I_bg"] = float(pb.I_bg)
    return h


@torch.no_grad()
def compute_trace(pb, spixel: int, fpixel: int, st=None, prep=None,
                  max_elements: int = (1 << 19)) -> Dict[str, Any]:
    """All intermediate values of pixel (``spixel``, ``fpixel``) as a nested dict.

    Layout (also the ``--trace-json`` file)::

        {"pixel": [s, f], "rendered": bool, "header": {...},
         "state_before": {"interpolate": bool, "first_done": bool},
         "subpixels": [{"layer", "sub_s", "sub_f", "pixel_pos_meters", ...,
                        "sources": [{"source", "incident_vec", ..., "dmin_skipped",
                                     "phi_steps": [{"phi_tic", "phi_deg",
                                                    "mosaic_domains": [{"mos_tic", "hkl_frac", ...}]}]}]}],
         "final": {"I_before_scaling", ..., "I_pixel_final", "floatimage_accumulated"},
         "lines": [[prefix, name, value], ...]}        # the text trace, in order

    With ``st``/``prep`` (the CLI's set-up) the header also carries the
    convention, pivot and beam centres.
    """
    S_, F_ = pb.spixels, pb.fpixels
    if not (0 <= spixel < S_ and 0 <= fpixel < F_):
        raise TraceError(f"-trace_pixel: pixel (slow={spixel}, fast={fpixel}) is outside the "
                         f"{S_}x{F_} (slow x fast) detector")
    lines: List[list] = []

    def put(name, value, prefix="TRACE_PY:"):
        lines.append([prefix, name, value])

    header = _header(st, prep, pb)
    out: Dict[str, Any] = {"format": TRACE_FORMAT_VERSION, "pixel": [int(spixel), int(fpixel)],
                           "header": header}
    put("trace_pixel", [int(spixel), int(fpixel)])
    for k, v in header.items():
        put(k, v)

    idx = spixel * F_ + fpixel
    where = torch.nonzero(pb.pixels == idx).reshape(-1)
    if where.numel() == 0:
        out["rendered"] = False
        out["final"] = {"I_pixel_final": 0.0, "floatimage_accumulated": 0.0}
        put("rendered", 0)
        put("I_pixel_final", 0.0)
        out["lines"] = lines
        return out
    out["rendered"] = True
    put("rendered", 1)
    n_before = int(where[0])
    state = _state_before(pb, n_before, max_elements)
    out["state_before"] = {"interpolate": bool(state.interpolate), "first_done": bool(state.first_done)}
    put("interpolate_active", int(state.interpolate))

    dev = pb.fdet.device
    T, O = pb.thicksteps, pb.oversample
    pix = torch.tensor([idx], dtype=torch.long, device=dev)
    # the render's own stages (engine.render_chunk), for this one pixel; the factors at every
    # sub-pixel / source (the -oversample_* forms), the cached ones are picked in the loop below
    g = _engine.subpixel_geometry(pb, pix, state)
    pos = torch.stack([g.px[..., 0], g.py[..., 0], g.pz[..., 0]], -1)   # (T, O, O, 3)
    airpath = g.airpath[..., 0]                                         # (T, O, O)
    diffracted = pos / airpath.unsqueeze(-1)
    omega_all = _engine.solid_angle_stage(pb.replace(oversample_omega=True), g)[0][..., 0]
    capture_all = (_engine.capture_stage(pb.replace(oversample_thick=True), g)[0] if pb.thickness_on else None)
    capture_all = torch.ones_like(airpath) if capture_all is None else capture_all[..., 0]
    incident = pb.incident                                              # (S, 3)
    wavelength = pb.wavelength                                          # (S,)
    S = incident.shape[0]
    dq, keep_stage = _engine.scattering_stage(pb, g)                    # (T, O, O, S, 1) components
    q = torch.stack([c[..., 0] for c in dq], -1) / wavelength.unsqueeze(-1)   # (T, O, O, S, 3)
    stol = 0.5 * torch.linalg.vector_norm(q, dim=-1)                    # (T, O, O, S)
    keep = torch.ones_like(stol, dtype=torch.bool) if keep_stage is None else keep_stage[..., 0]
    polar_all = _engine.polarization_stage(pb.replace(oversample_polar=True, nopolar=False), g,
                                           keep_stage)[0][..., 0]       # (T, O, O, S)
    dif_e = diffracted.unsqueeze(-2).expand(T, O, O, S, 3)
    inc_e = incident.expand(T, O, O, S, 3)
    cos2t_all = (inc_e * dif_e).sum(-1)

    E0 = T * O * O * S
    patched: list = []
    h, k, l = (u.reshape(E0, -1) for u in _engine.miller_stage(pb, g, dq, keep_stage, state, False, patched))
    M = h.shape[1]
    lat_used = pb.lattices.unsqueeze(0).expand(E0, M, 3, 3)
    first_row = None
    if patched:
        first_row = patched[0][0]
        lat_used = lat_used.clone()
        lat_used[first_row] = pb.lattices_first
    F_latt = _engine.lattice_factor(pb, h, k, l)                          # (E0, M), signed
    if pb.shape == "square":
        red = pb.reduced_sincg
        F_a = _lattice_square(h, k, l, pb.Na, 1, 1, reduced=red)
        F_b = _lattice_square(h, k, l, 1, pb.Nb, 1, reduced=red)
        F_c = _lattice_square(h, k, l, 1, 1, pb.Nc, reduced=red)
    evaluated = ((F_latt != 0) | pb.water) & keep.reshape(E0, 1)
    interp_before = bool(state.interpolate)
    F_cell = _engine.structure_factor(pb, h, k, l, evaluated, state)       # (E0, M)
    F_cell = F_cell.expand(E0, M)
    term = F_cell * F_cell * F_latt * F_latt

    # truly rotated reciprocal vectors (1/Angstrom) of every lattice used
    A = lat_used * 1e10                                                   # (E0, M, 3 rows, 3) Angstrom
    a_, b_, c_ = A[..., 0, :], A[..., 1, :], A[..., 2, :]
    bxc = torch.linalg.cross(b_, c_, dim=-1)
    cxa = torch.linalg.cross(c_, a_, dim=-1)
    axb = torch.linalg.cross(a_, b_, dim=-1)
    V = (a_ * bxc).sum(-1, keepdim=True)
    recip_rot = torch.stack([bxc / V, cxa / V, axb / V], dim=-2)           # (E0, M, 3, 3)

    # phi angle and mosaic index of every orientation (the engine's order: phi outer, mosaic inner)
    phisteps = int(st.crystal.phisteps) if st is not None else M
    domains = M // phisteps if phisteps and M % phisteps == 0 else 1
    if domains * phisteps != M:
        phisteps, domains = M, 1
    phi_deg = None
    if st is not None:
        c = st.crystal
        phi_deg = [float((c.phi0 + c.phistep * p) * RTD) for p in range(phisteps)]

    # to Python lists for the literal loop
    L = lambda t: t.detach().cpu().tolist()
    posL, airL, difL = L(pos), L(airpath), L(diffracted)
    omegaL, capL = L(omega_all), L(capture_all)
    qL, stolL, keepL, polL, cosL = L(q), L(stol), L(keep), L(polar_all), L(cos2t_all)
    incL, lamL = L(incident), L(wavelength)
    hL, kL, lL = L(h), L(k), L(l)
    FlL, FcL, termL, evL = L(F_latt), L(F_cell), L(term), L(evaluated)
    if pb.shape == "square":
        FaL, FbL, FcaL = L(F_a), L(F_b), L(F_c)
    latL = L(lat_used)
    recL = L(recip_rot)
    recip0 = L(pb.recip)
    pix0L, fdetL, sdetL = _vec(pb.pix0), _vec(pb.fdet), _vec(pb.sdet)
    close = float(pb.close_distance)
    I_bg = float(pb.I_bg)

    # the reference program's pixel loop, literally
    ov_t, ov_p, ov_o = bool(pb.oversample_thick), bool(pb.oversample_polar), bool(pb.oversample_omega)
    legacy = bool(pb.legacy_oversample)
    I = I_bg
    polar_c = 1.0 if pb.nopolar else 0.0
    omega_c = 0.0
    cap_c = 1.0
    last_cos = None
    subpixels = []
    for t in range(T):
        cap_c = 1.0 if not pb.thickness_on else 0.0
        for ss in range(O):
            for sf in range(O):
                if omega_c == 0.0 or ov_o:
                    omega_c = omegaL[t][ss][sf]
                if cap_c == 0.0 or ov_t:
                    cap_c = capL[t][ss][sf]
                sub = {"layer": t, "sub_s": ss, "sub_f": sf,
                       "pixel_pos_meters": posL[t][ss][sf], "R_distance_meters": airL[t][ss][sf],
                       "diffracted_vec": difL[t][ss][sf], "omega_pixel_sr": omega_c,
                       "omega_subpixel_sr": omegaL[t][ss][sf], "obliquity_factor": close / airL[t][ss][sf],
                       "capture_fraction_current": cap_c, "capture_fraction_subpixel": capL[t][ss][sf],
                       "sources": []}
                put("subpixel", [t, ss, sf])
                for s in range(S):
                    e = ((t * O + ss) * O + sf) * S + s
                    lam = lamL[s]
                    inc = incL[s]
                    src = {"source": s, "incident_vec": inc, "lambda_meters": lam,
                           "lambda_angstroms": lam * 1e10, "scattering_vec_A_inv": qL[t][ss][sf][s],
                           "stol": stolL[t][ss][sf][s], "cos_2theta": cosL[t][ss][sf][s],
                           "polar_subpixel": polL[t][ss][sf][s], "dmin_skipped": not keepL[t][ss][sf][s],
                           "phi_steps": []}
                    last_cos = cosL[t][ss][sf][s]
                    sfx = "" if s == 0 else "@src%d" % s
                    if s == 0:
                        put("pix0_vector_meters", pix0L)
                        put("fdet_vec", fdetL)
                        put("sdet_vec", sdetL)
                        put("pixel_pos_meters", posL[t][ss][sf])
                        put("R_distance_meters", airL[t][ss][sf])
                        put("omega_pixel_sr", omega_c)
                        put("close_distance_meters", close)
                        put("obliquity_factor", close / airL[t][ss][sf])
                        put("diffracted_vec", difL[t][ss][sf])
                        put("incident_vec", inc)
                        put("lambda_meters", lam)
                        put("lambda_angstroms", lam * 1e10)
                        put("scattering_vec_A_inv", qL[t][ss][sf][s])
                        put("omega_subpixel_sr", omegaL[t][ss][sf])
                        put("capture_fraction_current", cap_c)
                        put("capture_fraction_subpixel", capL[t][ss][sf])
                    else:
                        put("incident_vec" + sfx, inc)
                        put("lambda_meters" + sfx, lam)
                        put("scattering_vec_A_inv" + sfx, qL[t][ss][sf][s])
                    put("stol" + sfx, stolL[t][ss][sf][s])
                    put("dmin_skipped" + sfx, int(not keepL[t][ss][sf][s]))
                    sub["sources"].append(src)
                    if not keepL[t][ss][sf][s]:
                        continue
                    if polar_c == 0.0 or ov_p:
                        polar_c = polL[t][ss][sf][s]
                    src["polar_current"] = polar_c
                    src["polar_subpixel"] = polL[t][ss][sf][s]
                    put("polar_current" + sfx, polar_c)
                    put("polar_subpixel" + sfx, polL[t][ss][sf][s])
                    I_src = 0.0
                    for p in range(phisteps):
                        ph = {"phi_tic": p, "mosaic_domains": []}
                        if phi_deg is not None:
                            ph["phi_deg"] = phi_deg[p]
                            if s == 0:
                                put("phi_deg@phi%d" % p, phi_deg[p])
                        for m in range(domains):
                            j = p * domains + m
                            lat = latL[e][j]
                            rec = recL[e][j]
                            hh, kk, ll = hL[e][j], kL[e][j], lL[e][j]
                            hkl0 = [int(math.ceil(hh - 0.5)), int(math.ceil(kk - 0.5)), int(math.ceil(ll - 0.5))]
                            ev = bool(evL[e][j])
                            dom = {"mos_tic": m, "rot_a_angstroms": [x * 1e10 for x in lat[0]],
                                   "rot_b_angstroms": [x * 1e10 for x in lat[1]],
                                   "rot_c_angstroms": [x * 1e10 for x in lat[2]],
                                   "a_star_A_inv": rec[0], "b_star_A_inv": rec[1], "c_star_A_inv": rec[2],
                                   "hkl_frac": [hh, kk, ll], "hkl_rounded": hkl0, "F_latt": FlL[e][j],
                                   "evaluated": ev}
                            if pb.shape == "square":
                                dom["F_latt_a"], dom["F_latt_b"], dom["F_latt_c"] = FaL[e][j], FbL[e][j], FcaL[e][j]
                            if ev:
                                dom["F_cell"] = FcL[e][j]
                                dom["I_contribution"] = termL[e][j]
                            ph["mosaic_domains"].append(dom)
                            # the C's own lines (source 0, phi 0, mosaic 0)
                            if s == 0 and p == 0 and m == 0:
                                put("rot_a_angstroms", dom["rot_a_angstroms"])
                                put("rot_b_angstroms", dom["rot_b_angstroms"])
                                put("rot_c_angstroms", dom["rot_c_angstroms"])
                                put("rot_a_star_A_inv", recip0[0])
                                put("rot_b_star_A_inv", recip0[1])
                                put("rot_c_star_A_inv", recip0[2])
                                put("hkl_frac", [hh, kk, ll])
                                put("hkl_rounded", hkl0)
                                if pb.shape == "square":
                                    put("F_latt_a", dom["F_latt_a"])
                                    put("F_latt_b", dom["F_latt_b"])
                                    put("F_latt_c", dom["F_latt_c"])
                                    put("F_latt", dom["F_latt"])
                            if s == 0 and m == 0 and pb.shape == "square":
                                lines.append(["TRACE_PY_PHI", None, {
                                    "phi_tic": p, "phi_deg": phi_deg[p] if phi_deg is not None else float("nan"),
                                    "k_frac": kk, "F_latt_b": dom["F_latt_b"], "F_latt": dom["F_latt"]}])
                            if ev and s == 0 and p == 0 and m == 0:
                                put("F_cell", dom["F_cell"])
                            if ev and s == 2 and p == 0 and m == 0:
                                pre = "TRACE_PY_SOURCE2:"
                                put("F_cell", dom["F_cell"], pre)
                                put("F_latt", dom["F_latt"], pre)
                                put("F_cell_squared", dom["F_cell"] * dom["F_cell"], pre)
                                put("F_latt_squared", dom["F_latt"] * dom["F_latt"], pre)
                                put("I_contribution", dom["F_cell"] * dom["F_cell"] * dom["F_latt"] * dom["F_latt"], pre)
                                put("polar", polar_c, pre)
                                put("cos2theta", cosL[t][ss][sf][s], pre)
                                put("lambda_angstroms", lam * 1e10, pre)
                                put("source_index", s, pre)
                            if s == 0:
                                tag = "@phi%d_mos%d" % (p, m)
                                put("rot_a_angstroms" + tag, dom["rot_a_angstroms"])
                                put("rot_b_angstroms" + tag, dom["rot_b_angstroms"])
                                put("rot_c_angstroms" + tag, dom["rot_c_angstroms"])
                                put("a_star_A_inv" + tag, rec[0])
                                put("b_star_A_inv" + tag, rec[1])
                                put("c_star_A_inv" + tag, rec[2])
                                put("hkl_frac" + tag, [hh, kk, ll])
                                put("hkl_rounded" + tag, hkl0)
                                if pb.shape == "square":
                                    put("F_latt_a" + tag, dom["F_latt_a"])
                                    put("F_latt_b" + tag, dom["F_latt_b"])
                                    put("F_latt_c" + tag, dom["F_latt_c"])
                                put("F_latt" + tag, dom["F_latt"])
                                put("evaluated" + tag, int(ev))
                                if ev:
                                    put("F_cell" + tag, dom["F_cell"])
                                    put("I_contribution" + tag, dom["I_contribution"])
                            if not ev:
                                continue
                            if legacy:
                                # the unmodified C: the running sum is multiplied after every term
                                I += termL[e][j]
                                I_src += termL[e][j]
                                if ov_t:
                                    I *= cap_c
                                if ov_p:
                                    I *= polar_c
                                if ov_o:
                                    I *= omega_c
                                continue
                            contrib = termL[e][j]
                            if ov_t:
                                contrib *= cap_c
                            if ov_p:
                                contrib *= polar_c
                            if ov_o:
                                contrib *= omega_c
                            I += contrib
                            I_src += contrib
                        src["phi_steps"].append(ph)
                    src["I_source_sum"] = I_src
                    put("I_source_sum" + sfx, I_src)
                subpixels.append(sub)
    out["subpixels"] = subpixels

    value = pb.r_e_sqr * float(pb.fluence) * I / pb.steps
    if not ov_t:
        value *= cap_c
    if not ov_p:
        value *= polar_c
    if not ov_o:
        value *= omega_c
    final = {
        "I_before_scaling": I, "r_e_meters": math.sqrt(pb.r_e_sqr), "r_e_sqr": pb.r_e_sqr,
        "fluence_photons_per_m2": float(pb.fluence), "steps": int(pb.steps),
        "oversample_thick": int(ov_t), "oversample_polar": int(ov_p), "oversample_omega": int(ov_o),
        "capture_fraction": cap_c, "polar": polar_c, "omega_pixel": omega_c,
        "cos_2theta": last_cos, "I_pixel_final": value,
        "floatimage_accumulated": float(np.float32(value)),
    }
    for name, v in final.items():
        put(name, v)
    out["final"] = final
    out["state_after"] = {"interpolate": bool(state.interpolate), "first_done": bool(state.first_done),
                          "interpolation_switched_off_here": bool(interp_before and not state.interpolate)}
    if interp_before and not state.interpolate:
        put("interpolation_switched_off", 1)
    out["lines"] = lines
    return out


def format_lines(lines) -> List[str]:
    """The text trace (one string per line) from ``compute_trace(...)["lines"]``."""
    text = []
    for prefix, name, value in lines:
        if prefix == "TRACE_PY_PHI":
            v = value
            text.append("TRACE_PY_PHI phi_tic=%d phi_deg=%.15g k_frac=%.15g F_latt_b=%.15g F_latt=%.15g"
                        % (v["phi_tic"], v["phi_deg"], v["k_frac"], v["F_latt_b"], v["F_latt"]))
        else:
            text.append("%s%s %s" % (prefix, name, _fmt(value)))
    return text


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items() if k != "lines"}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    return x


def write_json(data: Dict[str, Any], path: str) -> None:
    from ..io.atomic import atomic_write_bytes
    text = json.dumps(_jsonable(data), indent=1)
    atomic_write_bytes(path, text.encode())


def trace_pixel(st, prep, pb, out, json_path: Optional[str] = None):
    """The CLI hook: trace ``st.flags.trace_pixel`` = [slow, fast]; print to ``out``; optional JSON."""
    spixel, fpixel = (int(v) for v in st.flags.trace_pixel)
    engine_dtype = pb.fdet.dtype
    if engine_dtype != torch.float64:
        # the trace is a parity tool: it always evaluates in double precision, like the C
        from dataclasses import replace
        from ..simulator import build_problem
        pb = build_problem(prep, st.crystal, st.detector, st.beam, st.structure_factors,
                           replace(st.options, dtype="float64"))
        print("TRACE_PY_NOTE: the trace is evaluated in float64; the image is rendered in %s"
              % str(engine_dtype).replace("torch.", ""), file=out)
    try:
        data = compute_trace(pb, spixel, fpixel, st=st, prep=prep,
                             max_elements=getattr(st.options, "max_chunk_elements", None) or (1 << 19))
    except TraceError as e:
        from ..cli.resolve import SetupError
        raise SetupError(str(e)) from None
    for line in format_lines(data["lines"]):
        print(line, file=out)
    if not data["rendered"]:
        print("TRACE_PY_NOTE: pixel (slow=%d, fast=%d) is not rendered (outside the ROI or masked)"
              % (spixel, fpixel), file=out)
    if json_path:
        write_json(data, json_path)
    try:
        out.flush()
    except Exception:
        pass
    return data

#!/usr/bin/env python
"""Every golden case through the compiled path (-compile), against the C images.

    python benchmarks/golden_compiled.py [--golden ../shared/golden] [--dtype float32|float64]
                                         [--device cpu|cuda] [--only case1,case2]

The chunk budget is forced small enough that each image renders at least two full
chunks through the compiled kernel.  Tolerances are the golden suite's: float64
correlation >= 0.999999 and max |diff| <= 1e-4 max |ref|; float32 correlation >= 0.9999.
Cases the compiled path does not take (tricubic interpolation, -phi_carryover c) are
listed as such; they render eagerly.  Each case costs one compilation (tens of
seconds on a 2-core CPU), so this is a check to run by hand, not part of the tests.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nanobragg_torch import engine, pipeline


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--golden", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "golden"))
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default="")
    a = ap.parse_args(argv)
    g = Path(a.golden)
    cases = json.loads((g / "cases.json").read_text())
    only = set(filter(None, a.only.split(",")))
    npass = nfail = 0
    for case, spec in sorted(cases.items()):
        if only and case not in only:
            continue
        work = Path(tempfile.mkdtemp(prefix="nbcomp_"))
        os.symlink(g / "inputs", work / "inputs")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            st = pipeline.setup_from_args(shlex.split(spec["args"]) + ["-dtype", a.dtype, "-device", a.device],
                                          cwd=str(work))
            prep = pipeline.prepare_setup(st)
            pb = pipeline.make_problem(st, prep)
        if not engine.compile_eligible(pb):
            print(f"{case}: not taken by the compiled path (eager)", flush=True)
            continue
        w = engine.chunk_weight(pb)
        n = pb.pixels.numel()
        ch = min(max(1, n // 2), max(1, (1 << 19) // w))
        t = time.perf_counter()
        with torch.no_grad():
            res = engine.render(pb, ch * w, compiled=True)
        img = res.image.double().cpu().numpy().ravel()
        dt = time.perf_counter() - t
        ref = np.fromfile(g / case / "float.bin", dtype="<f4").astype(np.float64)
        corr = (float(np.corrcoef(ref, img)[0, 1]) if ref.std() > 0 and img.std() > 0
                else float(np.allclose(ref, img)))
        rel = float(np.abs(ref - img).max() / (np.abs(ref).max() or 1.0))
        ok = (corr >= 0.999999 and rel <= 1e-4) if a.dtype == "float64" else corr >= 0.9999
        ok = ok and res.compiled_chunks == n // ch
        npass += ok
        nfail += not ok
        print(f"{case}: {'PASS' if ok else 'FAIL'} corr={corr:.8f} max_rel={rel:.3e} "
              f"compiled chunks={res.compiled_chunks}/{n // ch} compile+render {dt:.1f}s", flush=True)
    print(f"compiled {a.dtype} on {a.device}: {npass}/{npass + nfail} cases pass")
    return 0 if nfail == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

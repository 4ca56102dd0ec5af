#!/usr/bin/env python3
"""Check the noise kernel's fast functions against this machine's libm over every input they meet.

backends/cnoise.c computes tan(PI u) for every value ran1 can return, and poidev's set-up
(log, gammln) for the means of an image, with fast functions in SIMD lanes, and takes libm's
function wherever the float rounding of the fast value is not certain.  That makes the images
identical to the C programs' whenever libm is within its documented error.  This script checks
it outright, for this libm, on the whole input range:

  * ran1: all 2^31 - 2 LCG values (u = ran1's float): y = (float)tan(PI u) and u equal libm's;
  * poidev's set-up: every float mean in [12, 1e6] (the rejection branch): in lanes (means known
    ahead) and with Stirling's series for gammln (means drawn), the same floats as the plain
    set-up.

    python scripts/check_fast_functions.py            # all of it (about two and a half minutes)
    python scripts/check_fast_functions.py --quick    # 1 in 64 of the blocks

Prints the counts (mismatches must be 0), the largest error of the fast tan in ulps and of the
two logs used for poidev's acceptance test, and how often libm was needed.  Exit status 1 on
any mismatch.  Not part of the tests (tests/test_companion_kernels.py checks sampled ranges).
"""
from __future__ import annotations

import argparse
import struct
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="check 1 block in 64")
    a = ap.parse_args()
    from nanobragg_torch.backends import cnoise
    lib = cnoise.load()
    if lib is None:
        print(f"the noise kernel is not available: {cnoise.error()}", file=sys.stderr)
        return 2
    step = 64 if a.quick else 1
    block = 1 << 24
    IM = 2147483647
    t0 = time.perf_counter()
    bad = libm = 0
    worst = {"tan_ulps": 0.0, "c_error": 0.0, "L_error": 0.0}
    checked = 0
    starts = list(range(1, IM, block))[::step]
    for k, v in enumerate(starts):
        n = min(block, IM - v)
        b, st = cnoise.lanes_check(lib, "tan", v, n)
        bad += b
        libm += int(st["libm_lanes"])
        checked += n
        for key in worst:
            worst[key] = max(worst[key], st[key])
        if k % 16 == 15:
            print(f"  ran1 values: {checked:,} checked, {bad} mismatches ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    print(f"ran1 values: {checked:,} checked, {bad} mismatches of y or u; fast tan within "
          f"{worst['tan_ulps']:.0f} ulp of libm's; libm's tan taken {libm} times; c within "
          f"{worst['c_error']:.1e}, L within {worst['L_error']:.1e}")
    lo = struct.unpack("<I", struct.pack("<f", 12.0))[0]
    hi = struct.unpack("<I", struct.pack("<f", 1.0e6))[0] + 1
    sbad = scalar = scount = 0
    for v in list(range(lo, hi, block))[::step]:
        n = min(block, hi - v)
        b, st = cnoise.lanes_check(lib, "setup", v, n)
        sbad += b
        scalar += int(st["scalar_lanes"])
        scount += n
    print(f"poidev set-up (in lanes, means known ahead): {scount:,} float means in [12, 1e6] checked, "
          f"{sbad} mismatches; the scalar taken {scalar} times")
    gbad = calls = 0
    gerr = 0.0
    for v in list(range(lo, hi, block))[::step]:
        n = min(block, hi - v)
        b, st = cnoise.lanes_check(lib, "gammln", v, n)
        gbad += b
        calls += int(st["gammln_calls"])
        gerr = max(gerr, st["series_error"])
    print(f"poidev set-up (Stirling's series, means drawn): {scount:,} float means checked, {gbad} mismatches; "
          f"series within {gerr:.1e} of gammln; gammln taken {calls} times ({time.perf_counter() - t0:.0f} s in all)")
    return 1 if bad or sbad or gbad else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The extended random run of the property tests (tests/test_property.py).

Runs every property (or those named) with ``NB_FUZZ_EXAMPLES`` random examples
each (default 10000), one pytest process per property, and prints one line per
property: examples run, passed, failed, invalid (rejected by the strategy's
filters or by ``assume``), seconds.  Exit status 0 when every property passed.

    nice -n 5 .venv/bin/python scripts/fuzz.py                 # 10000 examples per property
    .venv/bin/python scripts/fuzz.py -n 500 legal random       # a quick run of two properties
    nice -n 5 .venv/bin/python scripts/fuzz.py -n 2500 --repeat 4 legal   # 4 random runs, counts summed

With ``--repeat K`` each property runs K times (each with a fresh random seed)
and a total line follows; the counts are reported run by run, so a long run
that is stopped still has its finished runs on record.

A failing example is printed by hypothesis (with a ``@reproduce_failure``
blob); add it to tests/test_degenerate.py as a regression test.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROPERTIES = ("test_legal_parameters_render_finite_images", "test_random_argument_lists_fail_cleanly",
              "test_hkl_reader", "test_fdump_reader", "test_matrix_reader", "test_smv_reader",
              "test_source_and_stol_reader", "test_header_images_through_the_cli",
              "tests/test_cio.py::test_random_tables_read_as_numpy",
              "tests/test_companion_kernels.py::test_random_noise_inputs_match_numba")


def _counts(text: str):
    """(passing, failing, invalid) summed over hypothesis' phases (--hypothesis-show-statistics)."""
    tot = [0, 0, 0]
    for m in re.finditer(r"(\d+) passing, (\d+) failing, and (\d+) invalid", text):
        for i in range(3):
            tot[i] += int(m.group(i + 1))
    return tot


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--examples", type=int, default=10000, help="examples per property (10000)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per property, counts summed (1)")
    ap.add_argument("names", nargs="*", help="properties to run (substrings of the test names; default all)")
    args = ap.parse_args(argv)
    chosen = [p for p in PROPERTIES if not args.names or any(n in p for n in args.names)]
    if not chosen:
        print("fuzz.py: error: no property matches %s" % " ".join(args.names), file=sys.stderr)
        return 2
    env = dict(os.environ, NB_FUZZ_EXAMPLES=str(args.examples))
    env.pop("CI", None)
    failed = 0
    print("%-45s %8s %8s %7s %8s %8s" % ("property", "examples", "passed", "failed", "invalid", "seconds"))
    row = "%-45s %8d %8d %7d %8d %8.0f%s"
    for name in chosen:
        total = [0, 0, 0, 0.0]
        for _ in range(max(args.repeat, 1)):
            t0 = time.time()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "--hypothesis-show-statistics", "--hypothesis-seed=%d" % random.getrandbits(32),
                                   name if "::" in name else f"tests/test_property.py::{name}"],
                                  cwd=ROOT, env=env, capture_output=True, text=True)
            dt = time.time() - t0
            text = proc.stdout + proc.stderr
            passed, fails, invalid = _counts(text)
            ok = proc.returncode == 0
            failed += not ok
            for i, x in enumerate((passed, fails, invalid, dt)):
                total[i] += x
            print(row % (name, passed + fails + invalid, passed, fails, invalid, dt, "" if ok else "  FAILED"),
                  flush=True)
            if not ok:
                print(text[-6000:], file=sys.stderr)
        if args.repeat > 1:
            print(row % ("  total", sum(total[:3]), total[0], total[1], total[2], total[3], ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

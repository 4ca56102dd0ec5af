"""``compare-traces A B``: line up two pixel traces quantity by quantity.

Reads two text traces -- this project's (``TRACE_PY:`` lines, from
``nanoBragg ... -trace_pixel S F``) and/or the instrumented reference
program's (``TRACE_C:`` lines) -- in any combination, matches quantities by
name and occurrence index (the 3rd ``hkl_frac`` of A with the 3rd ``hkl_frac``
of B), and prints for every quantity found in both the largest absolute and
relative difference over its occurrences.  The first quantity (in A's line
order) whose relative difference exceeds ``--threshold`` is named; the exit
status is 0 when there is none, 1 otherwise (2 for usage or read errors).

Accepted line forms (anything else in the files is ignored)::

    TRACE_PY:name v1 v2 v3        TRACE_C: name v1 v2 v3        TRACE_C:name=v1 v2 v3
    TRACE_C_PHI phi_tic=0 phi_deg=.. k_frac=..     (-> quantities PHI.phi_tic, PHI.k_frac, ...)
    TRACE_C_SOURCE2: F_cell 12.5                   (-> quantity SOURCE2.F_cell)

Values may be numbers, ``key:number`` tokens, bracketed matrices, or text
(compared exactly).  The relative difference of a quantity is
``max|a_i - b_i| / max(max|a_i|, max|b_i|)``: a vector is compared relative to
its largest component (``--componentwise`` compares every component relative
to itself).  Differences no larger than ``--abs-tol`` count as zero.  A
quantity printed a different number of times in A and B fails, unless
``--allow-count-mismatch`` (any quantity) or ``--count-mismatch-ok PATTERN``
(matching names only) says otherwise; then the occurrences present in both are
compared.  (The reference program's ``-DTRACING`` build, beam pivot, prints the
detector basis a second time, after all rotations, again under the names
``fdet_after_rotz`` ... and ``fdet_after_twotheta`` ...: compare it with
``--count-mismatch-ok '*_after_rotz' --count-mismatch-ok '*_after_twotheta'
--count-mismatch-ok twotheta_axis``.)
"""
from __future__ import annotations

import argparse
import fnmatch
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

# anywhere in a line: the C program sometimes prints a warning without a newline before a trace line
_LINE_RE = re.compile(r"(?<![A-Za-z0-9_])TRACE_(?:C|PY)(?![A-Za-z0-9])((?:_[A-Za-z0-9]+)*)(:?)\s*(.*?)\s*$")
_SKIP_FAMILIES = {"_NOTE"}


@dataclass
class Quantity:
    key: str                 # namespaced name
    occurrence: int          # 0-based index among lines with this key
    line: int                # 1-based line number in its file
    values: list             # floats, or a single string for text values
    numeric: bool


@dataclass
class Trace:
    path: str
    order: List[Tuple[str, int]] = field(default_factory=list)        # (key, occurrence) in file order
    items: Dict[Tuple[str, int], Quantity] = field(default_factory=dict)
    counts: Dict[str, int] = field(default_factory=dict)

    def add(self, key: str, values: list, numeric: bool, line: int) -> None:
        occ = self.counts.get(key, 0)
        self.counts[key] = occ + 1
        q = Quantity(key, occ, line, values, numeric)
        self.items[(key, occ)] = q
        self.order.append((key, occ))


def _parse_values(text: str):
    """(values, numeric) from the value part of a line."""
    t = text.replace("[", " ").replace("]", " ").replace(";", " ").replace(",", " ")
    toks = t.split()
    if not toks:
        return [text], False
    vals = []
    for tok in toks:
        cand = tok.rsplit(":", 1)[-1] if ":" in tok else tok
        try:
            vals.append(float(cand))
        except ValueError:
            return [text.strip()], False
    return vals, True


def parse_trace_lines(lines: Sequence[str], path: str = "<lines>") -> Trace:
    """Parse trace lines (of either program) into a :class:`Trace`."""
    tr = Trace(path)
    for n, raw in enumerate(lines, start=1):
        m = _LINE_RE.search(raw.rstrip("\n"))
        if not m:
            continue
        family, colon, rest = m.group(1), m.group(2), m.group(3)
        if family.upper() in _SKIP_FAMILIES:
            continue
        ns = family[1:] + "." if family else ""
        if not colon:
            # "TRACE_C_PHI key=value key=value ..." style
            for tok in rest.split():
                if "=" not in tok:
                    continue
                k, v = tok.split("=", 1)
                vals, num = _parse_values(v)
                tr.add(ns + k, vals, num, n)
            continue
        mm = re.match(r"^([^\s=]+)\s*(?:=\s*|\s+|$)(.*)$", rest)
        if not mm:
            continue
        name, valtext = mm.group(1), mm.group(2)
        vals, num = _parse_values(valtext)
        tr.add(ns + name, vals, num, n)
    return tr


def read_trace(path: str) -> Trace:
    with open(path, "r", errors="replace") as fh:
        return parse_trace_lines(fh.readlines(), path)


def quantity_difference(a: Quantity, b: Quantity, componentwise: bool = False,
                        abs_tol: float = 0.0) -> Tuple[float, float]:
    """(absolute, relative) difference of two occurrences; (inf, inf) for a structural mismatch."""
    if a.numeric != b.numeric:
        return math.inf, math.inf
    if not a.numeric:
        return (0.0, 0.0) if a.values == b.values else (math.inf, math.inf)
    if len(a.values) != len(b.values):
        return math.inf, math.inf
    max_abs = 0.0
    max_rel = 0.0
    scale = max([abs(x) for x in a.values + b.values if math.isfinite(x)] or [0.0])
    for x, y in zip(a.values, b.values):
        if math.isnan(x) and math.isnan(y):
            continue
        if x == y:
            continue
        d = abs(x - y)
        if math.isnan(d):
            return math.inf, math.inf
        if d <= abs_tol:
            continue
        max_abs = max(max_abs, d)
        ref = max(abs(x), abs(y)) if componentwise else scale
        rel = d / ref if ref > 0 else math.inf
        max_rel = max(max_rel, rel)
    return max_abs, max_rel


@dataclass
class NameSummary:
    key: str
    compared: int
    count_a: int
    count_b: int
    max_abs: float
    max_rel: float
    worst: int               # occurrence index of max_rel


def compare(a: Trace, b: Trace, threshold: float = 1e-9, componentwise: bool = False,
            abs_tol: float = 0.0, ignore: Sequence[str] = (), only: Sequence[str] = (),
            strict_counts: bool = True, count_mismatch_ok: Sequence[str] = ()):
    """Compare two traces.

    A quantity printed a different number of times in A and B is a failure
    (``strict_counts``) unless its name matches a glob in ``count_mismatch_ok``;
    either way only the occurrences present in both are compared.

    Returns (summaries in A's order, first offending (key, occurrence, abs, rel, why) or None,
    keys only in A, keys only in B).
    """
    def wanted(k):
        if any(fnmatch.fnmatchcase(k, p) for p in ignore):
            return False
        return not only or any(fnmatch.fnmatchcase(k, p) for p in only)

    summaries: Dict[str, NameSummary] = {}
    first = None
    for key, occ in a.order:
        if key not in b.counts or not wanted(key):
            continue
        s = summaries.get(key)
        if s is None:
            s = summaries[key] = NameSummary(key, 0, a.counts[key], b.counts[key], 0.0, 0.0, 0)
            if (strict_counts and a.counts[key] != b.counts[key] and first is None
                    and not any(fnmatch.fnmatchcase(key, p) for p in count_mismatch_ok)):
                first = (key, min(a.counts[key], b.counts[key]), math.inf, math.inf,
                         "occurs %d times in A, %d times in B" % (a.counts[key], b.counts[key]))
        qb = b.items.get((key, occ))
        if qb is None:
            continue
        qa = a.items[(key, occ)]
        d_abs, d_rel = quantity_difference(qa, qb, componentwise, abs_tol)
        s.compared += 1
        if d_abs > s.max_abs:
            s.max_abs = d_abs
        if d_rel > s.max_rel:
            s.max_rel = d_rel
            s.worst = occ
        if d_rel > threshold and first is None:
            why = ("values differ" if math.isfinite(d_rel) else
                   "text or shape differs")
            first = (key, occ, d_abs, d_rel, why)
    only_a = [k for k in a.counts if k not in b.counts and wanted(k)]
    only_b = [k for k in b.counts if k not in a.counts and wanted(k)]
    return list(summaries.values()), first, only_a, only_b


def _short(vals, numeric):
    if not numeric:
        return vals[0]
    return " ".join("%.15g" % v for v in vals)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="compare-traces",
        description="Align two pixel traces (TRACE_PY:/TRACE_C: lines) by name and occurrence and "
                    "report absolute and relative differences. Exit 0 if no quantity differs by more "
                    "than --threshold (relative), 1 otherwise.")
    ap.add_argument("trace_a", help="first trace (e.g. this project's -trace_pixel output)")
    ap.add_argument("trace_b", help="second trace (e.g. the instrumented C program's output)")
    ap.add_argument("--threshold", type=float, default=1e-9, help="relative difference allowed (default 1e-9)")
    ap.add_argument("--abs-tol", type=float, default=0.0,
                    help="absolute differences up to this are treated as zero (default 0)")
    ap.add_argument("--componentwise", action="store_true",
                    help="relative difference per component instead of relative to the vector's largest component")
    ap.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                    help="skip quantities whose name matches this glob (repeatable)")
    ap.add_argument("--only", action="append", default=[], metavar="PATTERN",
                    help="compare only quantities matching this glob (repeatable)")
    ap.add_argument("--allow-count-mismatch", action="store_true",
                    help="do not fail when a quantity occurs a different number of times in A and B")
    ap.add_argument("--count-mismatch-ok", action="append", default=[], metavar="PATTERN",
                    help="quantities matching this glob may occur a different number of times in A and B "
                         "(their common occurrences are compared; repeatable)")
    ap.add_argument("--all", action="store_true", help="print every occurrence, not one row per quantity")
    ap.add_argument("--quiet", "-q", action="store_true", help="print only the verdict")
    args = ap.parse_args(argv)
    try:
        a = read_trace(args.trace_a)
        b = read_trace(args.trace_b)
    except OSError as e:
        print("compare-traces: error: %s: %s" % (e.filename or "", e.strerror or e), file=sys.stderr)
        return 2
    if not a.order or not b.order:
        empty = args.trace_a if not a.order else args.trace_b
        print("compare-traces: error: no TRACE_C:/TRACE_PY: lines in %s" % empty, file=sys.stderr)
        return 2
    summaries, first, only_a, only_b = compare(
        a, b, args.threshold, args.componentwise, args.abs_tol, args.ignore, args.only,
        strict_counts=not args.allow_count_mismatch, count_mismatch_ok=args.count_mismatch_ok)
    out = sys.stdout
    if not args.quiet:
        print("A: %s (%d lines, %d quantities)" % (a.path, len(a.order), len(a.counts)), file=out)
        print("B: %s (%d lines, %d quantities)" % (b.path, len(b.order), len(b.counts)), file=out)
        print("%-36s %9s %12s %12s" % ("quantity", "compared", "max |diff|", "max rel"), file=out)
        for s in summaries:
            flag = " <" if s.max_rel > args.threshold else ""
            cnt = "%d" % s.compared if s.count_a == s.count_b else "%d(%d/%d)" % (s.compared, s.count_a, s.count_b)
            print("%-36s %9s %12.3e %12.3e%s" % (s.key, cnt, s.max_abs, s.max_rel, flag), file=out)
            if args.all:
                for occ in range(s.compared):
                    qa, qb = a.items.get((s.key, occ)), b.items.get((s.key, occ))
                    if qa is None or qb is None:
                        continue
                    d_abs, d_rel = quantity_difference(qa, qb, args.componentwise, args.abs_tol)
                    print("    [%d] A:%d B:%d abs=%.3e rel=%.3e" % (occ, qa.line, qb.line, d_abs, d_rel), file=out)
        if only_a:
            print("only in A (%d): %s" % (len(only_a), " ".join(only_a[:40]) + (" ..." if len(only_a) > 40 else "")),
                  file=out)
        if only_b:
            print("only in B (%d): %s" % (len(only_b), " ".join(only_b[:40]) + (" ..." if len(only_b) > 40 else "")),
                  file=out)
    if not summaries:
        print("compare-traces: no quantity is present in both traces", file=out)
        return 1
    worst = max(summaries, key=lambda s: s.max_rel)
    if first is None:
        print("PASS: %d quantities compared, largest relative difference %.3e (%s); threshold %.3g"
              % (len(summaries), worst.max_rel, worst.key, args.threshold), file=out)
        return 0
    key, occ, d_abs, d_rel, why = first
    qa, qb = a.items.get((key, occ)), b.items.get((key, occ))
    print("FAIL: first quantity above threshold %.3g: %s[%d] (%s): abs %.3e rel %.3e"
          % (args.threshold, key, occ, why, d_abs, d_rel), file=out)
    if qa is not None and qb is not None:
        print("  A line %d: %s" % (qa.line, _short(qa.values, qa.numeric)), file=out)
        print("  B line %d: %s" % (qb.line, _short(qb.values, qb.numeric)), file=out)
    return 1


def console_main():  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""nb-p1hkl: write the P1 ``h k l F`` text file nanoBragg reads, from an MTZ, an mmCIF structure-factor
file or an atomic model (what the C program's users do with ``mtz_to_P1hkl.com`` and refmac).

    nb-p1hkl data.mtz [-o P1.hkl] [--column FC]
    nb-p1hkl data-sf.cif [-o P1.hkl] [--column F_meas_au]
    nb-p1hkl model.pdb --model [--dmin 2.0] [-o P1.hkl]      (also model.cif)

The asymmetric unit is expanded with the space group's operators and Friedel
mates; a model's F are computed with gemmi on the absolute electron scale,
F000 included.  Bad input: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_IO = 0, 1, 2, 1


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="nb-p1hkl", description="Write P1 'h k l F' text for nanoBragg "
                                 "-hkl from an MTZ, an mmCIF structure-factor file or a model.")
    ap.add_argument("input", help="MTZ, mmCIF structure factors, or (with --model) a PDB/mmCIF model")
    ap.add_argument("-o", "--output", default="P1.hkl", help="output text file (default P1.hkl)")
    ap.add_argument("--column", help="amplitude column (MTZ label or _refln item); default: see docs")
    ap.add_argument("--model", action="store_true", help="compute F from the atomic model INPUT")
    ap.add_argument("--dmin", type=float, default=2.0, help="model: resolution limit in A (default 2.0)")
    try:
        opts = ap.parse_args(argv)
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_INPUT
    from ..io.hkl import InputFileError
    from ..io.structure import read_reflections, write_hkl
    try:
        if opts.model and opts.column:
            raise InputFileError("--column applies to MTZ and mmCIF structure-factor files, not --model")
        hkl, F = read_reflections(opts.input, opts.column, model=opts.model, d_min=opts.dmin)
    except InputFileError as e:
        print(f"nb-p1hkl: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    try:
        write_hkl(opts.output, hkl, F)
    except OSError as e:
        print(f"nb-p1hkl: error: cannot write {opts.output} ({e.strerror or e})", file=sys.stderr)
        return EXIT_IO
    print(f"wrote {len(F)} reflections to {opts.output}")
    return EXIT_OK


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())

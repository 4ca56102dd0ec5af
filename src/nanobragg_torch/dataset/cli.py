"""``nanobragg-dataset``: render a rotation series or serial shots described by an experiment file.

    nanobragg-dataset experiment.toml out/                      # this machine
    nanobragg-dataset experiment.toml out/ --scheduler tcp://host:8786
    nanobragg-dataset experiment.toml out/ --local-cluster 4    # a throw-away LocalCluster
    nanobragg-dataset experiment.toml out/ --dry-run            # print each frame's nanoBragg command
    nanobragg-dataset experiment.toml out/ --verify             # check files against the manifest

Exit status: 0 when every frame asked for is present, 1 when some failed,
2 for a bad experiment file or arguments, 130 when interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from .manifest import LockedError
from .spec import FORMATS, SpecError, load_spec
from .._console import is_broken_pipe


def parse_frames(text: str) -> List[int]:
    """``"0:10,15,20:30"`` -> indices (ranges are half-open, like Python slices)."""
    out: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                a, b = part.split(":", 1)
                out.extend(range(int(a), int(b)))
            else:
                out.append(int(part))
        except ValueError:
            raise SpecError(f"--frames: cannot read {part!r} (use e.g. 0:10,15)") from None
    return out


#: pip name -> (module, extra of nanobragg-torch that installs it)
_PACKAGES = {"fabio": ("fabio", "formats"), "h5py": ("h5py", "formats"), "pillow": ("PIL", "formats"),
             "gemmi": ("gemmi", "formats"), "dask": ("dask", "cluster"), "distributed": ("distributed", "cluster")}
_FORMAT_PACKAGES = {"cbf": "fabio", "h5": "h5py", "nxs": "h5py", "png": "pillow"}


def missing_packages(spec, cluster: bool) -> List[str]:
    """Every optional package (pip names) this run needs and this Python lacks: the frame
    format's writer, gemmi for structure factors from MTZ/mmCIF/model files, Dask for a cluster."""
    import importlib.util
    need = []
    if spec.format in _FORMAT_PACKAGES:
        need.append(_FORMAT_PACKAGES[spec.format])
    from ..io.structure import GEMMI_EXTENSIONS
    args = spec.frame(0).args if spec.count else []
    for i, a in enumerate(args[:-1]):
        if a == "-pdb" or (a == "-hkl" and os.path.splitext(args[i + 1])[1].lower() in GEMMI_EXTENSIONS):
            need.append("gemmi")
    if cluster:
        need += ["dask", "distributed"]
    out = []
    for name in need:
        if name not in out and importlib.util.find_spec(_PACKAGES[name][0]) is None:
            out.append(name)
    return out


def missing_packages_message(packages: List[str]) -> str:
    """One line naming every missing package and the extras that install them."""
    names = ["'%s'" % p for p in packages]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    extras = ",".join(sorted({_PACKAGES[p][1] for p in packages}))
    return (f"this run needs the {listed} package{'s' if len(packages) > 1 else ''} "
            f"(pip install 'nanobragg-torch[{extras}]')")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nanobragg-dataset",
        description="Render a whole dataset (rotation series or serial shots) from an experiment file, "
                    "locally or on a Dask cluster; reruns resume.")
    p.add_argument("experiment", help="experiment file (TOML)")
    p.add_argument("folder", help="dataset folder (created; a rerun resumes it)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address (tcp://host:8786)")
    where.add_argument("--local-cluster", metavar="N", type=int,
                       help="start a Dask LocalCluster of N one-thread worker processes")
    p.add_argument("--format", choices=sorted(FORMATS), help="frame file format (overrides [output] format)")
    p.add_argument("--frames", metavar="LIST", help="only these frame indices, e.g. 0:10,15")
    p.add_argument("--retries", type=int, metavar="N", help="retries per frame (overrides [run] retries)")
    p.add_argument("--batch", type=int, metavar="N", help="frames per Dask task (overrides [run] batch)")
    p.add_argument("--device", help="auto | cpu | cuda[:n] (overrides [run] device)")
    p.add_argument("--no-verify", action="store_true",
                   help="on resume, trust file sizes instead of re-reading every sha256")
    p.add_argument("--dry-run", action="store_true", help="print each frame's nanoBragg command and exit")
    p.add_argument("--verify", action="store_true", help="check the folder's files against the manifest and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-frame progress lines")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = {}
        if args.format:
            overrides["output"] = {"format": args.format}
        spec = load_spec(args.experiment, overrides)
        frames = parse_frames(args.frames) if args.frames else None
        if args.dry_run:
            from .runner import _cli_line
            for i in (frames if frames is not None else range(spec.count)):
                fr = spec.frame(i)
                print(_cli_line(fr.args + fr.output_args(spec.format, spec.noise)))
            return 0
        if args.verify:
            from .runner import verify_dataset
            res = verify_dataset(spec, args.folder)
            print(f"{args.folder}: {len(res['ok'])} frames ok, {len(res['bad'])} bad {res['bad'][:20]}, "
                  f"{len(res['missing'])} missing")
            return 0 if not res["bad"] and not res["missing"] else 1
        lacking = missing_packages(spec, cluster=bool(args.scheduler or args.local_cluster))
        if lacking:
            raise SpecError(missing_packages_message(lacking))
        from .runner import render_dataset
        summary = render_dataset(spec, args.folder, scheduler=args.scheduler, local_workers=args.local_cluster,
                                 frames=frames, retries=args.retries, batch=args.batch, device=args.device,
                                 verify=not args.no_verify,
                                 progress=None if args.quiet else sys.stdout)
        if args.quiet:
            print(summary.text())
    except (SpecError, LockedError) as e:
        print(f"nanobragg-dataset: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nanobragg-dataset: interrupted; finished frames are kept, rerun to resume", file=sys.stderr)
        return 130
    except OSError as e:
        if is_broken_pipe(e):       # the reader of stdout went away (| head): quiet
            raise
        print(f"nanobragg-dataset: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    if summary.interrupted:
        return 130
    return 1 if summary.failed else 0


if __name__ == "__main__":  # python -m nanobragg_torch.dataset.cli
    sys.exit(main())

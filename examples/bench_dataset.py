"""Images per second of a rotation series: in this process vs. a Dask LocalCluster.

    python examples/bench_dataset.py                       # 100 frames of 512x512, both ways
    python examples/bench_dataset.py --frames 10 --detpixels 256 --workers 2 4
    python examples/bench_dataset.py --only cluster --workers 2

Each frame is
``-cell 70 80 90 75 85 95 -default_F 100 -N 5 -lambda 1 -distance 100
-detpixels 512 -phi 0.1*i -osc 0.1 -phisteps 1 -seed 1+i`` (SMV noise image).
Local: frames rendered one after another in this process (torch on all
cores).  Cluster: ``LocalCluster(n_workers=W, threads_per_worker=1,
processes=True)``; the rate is reported warm (workers started and
nanobragg_torch imported before the clock starts) and with the start-up.
Output folders are temporary; all frames are checked to be byte-identical
across the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

EXPERIMENT = """
[setup]
flags = "-cell 70 80 90 75 85 95 -default_F 100 -N 5 -lambda 1 -distance 100 -detpixels {det}"

[rotation]
start = 0
osc = 0.1
frames = {frames}
phisteps = 1

[noise]
enabled = true
seed = 1
"""


def frame_bytes(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))
            if n.startswith("frame_")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--detpixels", type=int, default=512)
    p.add_argument("--workers", type=int, nargs="+", default=[2])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--only", choices=["local", "cluster"])
    p.add_argument("--json", help="write the numbers here too")
    args = p.parse_args(argv)

    t_import = time.perf_counter()
    import torch
    from nanobragg_torch.dataset import render_dataset
    t_import = time.perf_counter() - t_import
    tmp = tempfile.mkdtemp(prefix="bench_dataset_")
    exp = os.path.join(tmp, "experiment.toml")
    with open(exp, "w") as fh:
        fh.write(EXPERIMENT.format(det=args.detpixels, frames=args.frames))
    results = {"frames": args.frames, "detpixels": args.detpixels, "cpus": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "import_s": round(t_import, 2)}
    print(f"{args.frames} frames of {args.detpixels}x{args.detpixels}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); import {t_import:.1f} s", flush=True)
    folders = {}

    if args.only != "cluster":
        folder = os.path.join(tmp, "local")
        s = render_dataset(exp, folder, progress=None)
        assert not s.failed, s.failed
        results["local"] = {"seconds": round(s.seconds, 2), "images_per_second": round(s.images_per_second, 4)}
        print(f"local (this process):        {s.rendered} frames in {s.seconds:7.1f} s  "
              f"{s.images_per_second:.3f} images/s", flush=True)
        folders["local"] = folder

    if args.only != "local":
        from distributed import Client, LocalCluster
        for w in args.workers:
            t0 = time.perf_counter()
            with LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                client.run(lambda: __import__("nanobragg_torch.dataset.render") and None)
                startup = time.perf_counter() - t0
                folder = os.path.join(tmp, f"cluster{w}")
                s = render_dataset(exp, folder, client=client, batch=args.batch, progress=None)
                assert not s.failed, s.failed
            cold = s.rendered / (s.seconds + startup)
            results[f"cluster_{w}"] = {"seconds": round(s.seconds, 2), "startup_s": round(startup, 2),
                                       "images_per_second": round(s.images_per_second, 4),
                                       "images_per_second_with_startup": round(cold, 4)}
            print(f"LocalCluster {w} workers x 1 thread: {s.rendered} frames in {s.seconds:7.1f} s  "
                  f"{s.images_per_second:.3f} images/s warm; {cold:.3f} images/s with the "
                  f"{startup:.1f} s start-up", flush=True)
            folders[f"cluster{w}"] = folder

    if len(folders) > 1:
        ref = None
        for name, folder in folders.items():
            got = frame_bytes(folder)
            ref = ref or got
            assert got == ref, f"{name}: frames differ"
        print(f"all {len(ref)} frames byte-identical across {', '.join(folders)}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

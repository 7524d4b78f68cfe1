"""``python -m numbanorm warmup``: compile the kernels into Numba's on-disk cache ahead of time.

The first call of an op in a fresh environment compiles its kernels (seconds per op);
later processes load them from the cache (``numbanorm info`` shows where it is).
Warming up runs every op of the benchmark's table forward and backward, in each
layout and dtype asked for, at a tiny size (the serial kernels) and a small one
(the parallel kernels), so that a training script's first step finds them compiled.
The ops are shared among worker processes; a progress bar counts them.
"""
from __future__ import annotations

import concurrent.futures
import os
import sys
import time

DTYPES = ("float32", "float64", "float16")
SIZES = ("tiny", "small")   # below and above the size where the CPU kernels go parallel


def _warm(op, dtypes, backend):
    """Run ``op`` forward and backward in every layout, dtype and size: compiles what it calls."""
    from . import _bench
    for case in _bench.cases([op]):
        for dtype in dtypes:
            for size in SIZES:
                _bench.Run(case, size, dtype, backend).warm()
    return op


def add_arguments(parser):
    from ._bench import OPS
    parser.add_argument("--ops", nargs="+", choices=OPS, metavar="OP",
                        help=f"only these ops (default all: {', '.join(OPS)})")
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=["float32", "float64"],
                        help="the dtypes to compile for (default float32 float64)")
    parser.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                        help="the backend whose kernels to compile (default cpu)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes (default: the CPU count; 1 compiles in this process)")


def run_command(args, out=None):
    """Compile the kernels of ``args.ops`` for ``args.dtype``; returns the exit status."""
    from . import _bench
    out = out or sys.stdout
    ops = args.ops or list(_bench.OPS)
    try:
        _bench.check_backend(args.backend)
    except NotImplementedError as exc:
        print(f"numbanorm warmup: {exc}", file=sys.stderr)
        return 2
    jobs = max(1, min(args.jobs or os.cpu_count() or 1, len(ops)))
    start = time.perf_counter()
    from tqdm import tqdm  # (here, not at import: every command's parser imports this module)
    bar = tqdm(total=len(ops), unit="op", desc="compiling")
    try:
        if jobs == 1:
            for op in ops:
                bar.set_postfix_str(op)
                _warm(op, args.dtype, args.backend)
                bar.update()
        else:
            with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
                futures = [pool.submit(_warm, op, args.dtype, args.backend) for op in ops]
                for done in concurrent.futures.as_completed(futures):
                    bar.set_postfix_str(done.result())
                    bar.update()
    finally:
        bar.close()
    from .__main__ import cache_location
    print(f"compiled {len(ops)} ops ({', '.join(args.dtype)}) on {args.backend} in "
          f"{time.perf_counter() - start:.1f} s with {jobs} process{'es' if jobs > 1 else ''}; "
          f"cache: {cache_location()}", file=out)
    return 0

"""The ``numbanorm`` command: ``demo`` (the default), ``bench`` and ``info``.

    python -m numbanorm [demo]     # Figure 1 of the Batch Normalization paper on digits, in NumPy
    python -m numbanorm bench      # time every op: GB/s, fraction of copy, vs numpy and torch
    python -m numbanorm info       # versions, backends, GPU, threading layer, threads, cache
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata
import os
import platform
import sys
import warnings

COMMANDS = ("demo", "bench", "info")
OPTIONAL = (("numba-cuda", "cuda backend"), ("scikit-learn", "demo"), ("matplotlib", "demo"),
            ("mpi4py", "SyncBatchNorm"), ("torch", "bench comparison"), ("asv", "benchmarks"))


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_status():
    """One line about the GPU: found (name, compute capability), simulated, or why not; never raises."""
    try:
        import numba
        if numba.config.ENABLE_CUDASIM:
            return "none used: Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1)"
        missing = "" if _version("numba-cuda") else " (numba-cuda is not installed: pip install 'numbanorm[cuda]')"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # numba's own numba.cuda, deprecated, may still be there
            try:
                from numba import cuda
            except ImportError:
                return "not looked for: numba-cuda is not installed (pip install 'numbanorm[cuda]')"
            if not cuda.is_available():
                return "none found (numba.cuda.is_available() is False: no GPU or no driver)" + missing
            devices = []
            for device in cuda.list_devices():
                name = device.name.decode() if isinstance(device.name, bytes) else device.name
                devices.append(f"{device.id}: {name} (compute capability "
                               f"{'.'.join(map(str, device.compute_capability))})")
            return ("; ".join(devices) or "none found") + missing
    except Exception as exc:  # a broken driver or toolkit must not break `info`
        return f"unknown ({type(exc).__name__}: {exc})"


def cache_location():
    """Where Numba caches numbanorm's compiled CPU kernels, and how many are cached there."""
    import numba
    directory = None
    try:
        from numbanorm.cpu import layer_norm
        for value in vars(layer_norm).values():
            dispatcher = getattr(value, "parallel", value)
            cache = getattr(dispatcher, "_cache", None)
            if getattr(cache, "_cache_path", None):
                directory = cache._cache_path
                break
    except Exception:
        directory = None
    if directory is None:
        import numbanorm
        directory = numba.config.CACHE_DIR or os.path.join(os.path.dirname(numbanorm.__file__), "cpu",
                                                          "__pycache__")
    how = "NUMBA_CACHE_DIR" if numba.config.CACHE_DIR else "next to the sources, or a user cache if read-only"
    entries = len(glob.glob(os.path.join(directory, "*.nbi")))
    return f"{directory} ({entries} kernels cached there; {how})"


def info(args, out=None):
    """``python -m numbanorm info``: versions, backends, GPU, threading layer, threads, cache."""
    out = out or sys.stdout
    import numpy as np

    import numbanorm as nbn
    backends = nbn.available_backends()   # imports the cpu backend, which picks the threading layer
    print(f"numbanorm {nbn.__version__} ({os.path.dirname(nbn.__file__)})", file=out)
    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {_version('numba')}, "
          f"llvmlite {_version('llvmlite')}", file=out)
    print("optional: " + ", ".join(f"{name} {_version(name) or 'not installed'} ({what})"
                                   for name, what in OPTIONAL), file=out)
    print(f"backends available: {', '.join(backends)}", file=out)
    print(f"backend forced: {nbn.get_backend() or 'none (inferred from the arrays)'}", file=out)
    print(f"GPU: {gpu_status()}", file=out)
    if "cpu" in backends:
        import numba

        from ._bench import threading_info
        layer, threads = threading_info()   # after a parallel kernel ran
        print(f"threading layer: {layer} (in use; requested {numba.config.THREADING_LAYER!r})", file=out)
        print(f"threads: {threads} (numba.get_num_threads(); NUMBA_NUM_THREADS sets it), "
              f"CPU cores: {os.cpu_count()}", file=out)
        print(f"cache: {cache_location()}", file=out)
    else:
        print("threading layer, threads, cache: the cpu backend is not available", file=out)
    return 0


def build_parser():
    from . import _bench, _demo
    parser = argparse.ArgumentParser(prog="numbanorm", description="numbanorm's command: the demo (the default), "
                                     "benchmarks and information about this installation.",
                                     epilog="With no command, or options only, runs the demo.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,bench,info}")
    _demo.add_arguments(sub.add_parser(
        "demo", help="train a sigmoid MLP and a small convnet on digits with and without normalization "
                     "(Figure 1 of the Batch Normalization paper), plot, and time the kernels",
        description="Train, in plain NumPy with numbanorm's layers, a sigmoid MLP with and without "
                    "BatchNorm1d (Figure 1 of Ioffe & Szegedy 2015) and a small convnet with no norm, "
                    "BatchNorm2d and GroupNorm on scikit-learn's digits; print the test accuracy per "
                    "epoch, plot the curves to a PNG, and time the kernels on the backend."))
    _bench.add_arguments(sub.add_parser(
        "bench", help="time every op against copy bandwidth, numpy and torch",
        description="Time every op forward and backward on one backend: time, GB/s, fraction of "
                    "the copy bandwidth, speed-up over the numpy backend, time over PyTorch's."))
    sub.add_parser("info", help="versions, backends, GPU, threading layer, threads, cache directory",
                   description="Print versions, the backends available, the GPU found (or not), the Numba "
                               "threading layer in use, the thread count and the kernel cache directory.")
    return parser


def _package_version():
    from . import __version__
    return __version__


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv = ["demo", *argv]             # the default command
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from ._bench import run_command
        return run_command(args)
    if args.command == "info":
        return info(args)
    from ._demo import run_command
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())

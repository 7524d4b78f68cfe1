"""The ``numbanorm`` command: ``demo`` (the default), ``bench``, ``info``, ``gpu-report`` and ``warmup``.

    python -m numbanorm [demo]     # Figure 1 of the Batch Normalization paper on digits, in NumPy
    python -m numbanorm bench      # time every op: GB/s, fraction of copy, vs numpy and torch
    python -m numbanorm info       # versions, backends, GPU, threading layer, threads, cache
    python -m numbanorm gpu-report # every kernel launch compiled for sm_70/80/90: registers, spills, occupancy
    python -m numbanorm warmup     # compile the kernels into the on-disk cache once, after installing
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata
import os
import platform
import sys
import warnings

COMMANDS = ("demo", "bench", "info", "gpu-report", "warmup")
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
    entries = len(glob.glob(os.path.join(directory, "**", "*.nbi"), recursive=True))
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
    from ._pool import describe_pools
    print(f"memory pools: {describe_pools()}", file=out)
    return 0


def _gpu_static():
    """numbanorm/cuda/_static.py, loaded by its path: importing it as ``numbanorm.cuda._static``
    would import numbanorm.cuda, which needs a GPU or the simulator."""
    import importlib.util
    name = "numbanorm_gpu_static"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), "cuda",
                                                                          "_static.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def gpu_report(args, out=None):
    """``python -m numbanorm gpu-report``: the static GPU check's table; with ``--check``, exit 1
    on any violation."""
    out = out or sys.stdout
    static = _gpu_static()
    try:
        report = static.run(ccs=args.cc, ops=args.ops, workers=args.workers)
    except (RuntimeError, ValueError) as exc:
        print(f"gpu-report: {exc}", file=sys.stderr)
        return 2
    print(static.format_report(report), file=out)
    return 1 if args.check and report.violations else 0


def _compute_capability(text):
    major, _, minor = text.partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a compute capability: {text!r} (e.g. 9.0)") from None


def build_parser():
    from . import _bench, _demo, _warmup
    parser = argparse.ArgumentParser(prog="numbanorm", description="numbanorm's command: the demo (the default), "
                                     "benchmarks and information about this installation.",
                                     epilog="With no command, or options only, runs the demo.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
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
    report = sub.add_parser(
        "gpu-report", help="compile every kernel launch for real GPUs, without one: registers, spills, "
                           "shared memory, occupancy, hot-loop SASS",
        description="Dry-run the ops on a table of shapes in the CUDA simulator with a GPU's launch "
                    "choices, compile each kernel launched with ptxas for each compute capability, and "
                    "print registers, spills, shared memory, occupancy and the SASS of the hot loop, "
                    "then the launches that would fail or run badly on a GPU (needs numba-cuda[cu12]; "
                    "nvidia-cuda-nvdisasm for the SASS).")
    report.add_argument("--cc", nargs="+", type=_compute_capability, default=[(7, 0), (8, 0), (9, 0)],
                        metavar="X.Y", help="compute capabilities (default 7.0 8.0 9.0)")
    report.add_argument("--ops", nargs="+", metavar="OP", help="only these ops (default all)")
    report.add_argument("--workers", type=int, default=None, help="ptxas processes at once (default: CPUs)")
    report.add_argument("--check", action="store_true", help="exit 1 when there is any violation")
    _warmup.add_arguments(sub.add_parser(
        "warmup", help="compile the kernels into Numba's on-disk cache ahead of time",
        description="Run every op forward and backward at a tiny and a small size in each layout and "
                    "dtype asked for, in several processes, so that later processes load the compiled "
                    "kernels from the cache instead of compiling them on their first call."))
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
    if args.command == "gpu-report":
        return gpu_report(args)
    if args.command == "warmup":
        from ._warmup import run_command
        return run_command(args)
    from ._demo import run_command
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())

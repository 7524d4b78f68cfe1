"""The ``numbanorm`` command: ``demo`` (the default), ``info`` and ``bench``.

    python -m numbanorm            # normalize real arrays with every op, check them, time them
    python -m numbanorm info       # versions, backends, threads, cache
    python -m numbanorm bench      # time every op: GB/s, fraction of copy, vs numpy and torch
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time


def _info(args):
    import numpy as np

    import numbanorm as nbn
    backends = nbn.available_backends()  # imports the cpu backend, which picks the threading layer
    print(f"numbanorm {nbn.__version__}  python {platform.python_version()}  numpy {np.__version__}")
    try:
        import numba
        print(f"numba {numba.__version__}  threads {numba.get_num_threads()}  "
              f"threading layer requested {numba.config.THREADING_LAYER!r}  "
              f"cache dir {numba.config.CACHE_DIR or '(next to the sources, __pycache__)'}")
    except ImportError:
        print("numba: not installed")
    print("backends available:", ", ".join(backends))
    print("backend forced:", nbn.get_backend() or "none (inferred from the arrays)")
    return 0


def _best_time(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _demo(args):
    import numpy as np

    import numbanorm as nbn
    backends = nbn.available_backends()
    print("backends available:", ", ".join(backends))
    backend = args.backend
    rng = np.random.default_rng(0)
    n, c, h, w = args.shape
    # A batch of images with channels at very different offsets and scales, as
    # activations are: every op must bring them back to zero mean, unit variance.
    x = (rng.standard_normal((n, c, h, w)) * rng.uniform(0.1, 10.0, (1, c, 1, 1))
         + rng.uniform(-100.0, 100.0, (1, c, 1, 1))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    weight = np.ones(c, np.float32)
    bias = np.zeros(c, np.float32)
    cases = [
        ("batch_norm", (), dict(weight=weight, bias=bias, training=True,
                                running_mean=np.zeros(c, np.float32), running_var=np.ones(c, np.float32))),
        ("batch_norm (NHWC)", (), dict(weight=weight, bias=bias, training=True, axis=-1)),
        ("layer_norm", (), dict(axis=(1, 2, 3))),
        ("rms_norm", (), dict(axis=-1)),
        ("group_norm", (max(1, c // 4),), dict(weight=weight, bias=bias)),
        ("instance_norm", (), dict(weight=weight, bias=bias)),
    ]
    print(f"\ninput {x.shape} float32, channel means from {x.mean(axis=(0, 2, 3)).min():.1f} "
          f"to {x.mean(axis=(0, 2, 3)).max():.1f}; backend {backend!r} against the numpy reference\n")
    print(f"{'op':20s} {'out mean':>9s} {'out std':>8s} {'max |err|':>10s} {'fwd ms':>8s} {'bwd ms':>8s} "
          f"{'x numpy':>8s}")
    for label, args_, kwargs in cases:
        op = label.split()[0]
        data = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if "NHWC" in label else x
        grad = np.ascontiguousarray(dy.transpose(0, 2, 3, 1)) if "NHWC" in label else dy
        forward, backward = getattr(nbn, op + "_forward"), getattr(nbn, op + "_backward")
        run = lambda be: forward(data, *args_, backend=be, **kwargs)  # noqa: E731
        y, cache = run(backend)
        grads = backward(grad, cache)
        y_ref, cache_ref = run("numpy")
        grads_ref = backward(grad, cache_ref)
        err = max(float(np.max(np.abs(a - b))) for a, b in zip((y, *grads), (y_ref, *grads_ref))
                  if a is not None)
        t_fwd = _best_time(lambda: run(backend), args.repeat)
        t_bwd = _best_time(lambda: backward(grad, cache), args.repeat)
        t_ref = _best_time(lambda: run("numpy"), 1)
        print(f"{label:20s} {float(y.mean()):9.2e} {float(y.std()):8.4f} {err:10.2e} {t_fwd * 1e3:8.2f} "
              f"{t_bwd * 1e3:8.2f} {t_ref / t_fwd:7.1f}x")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="numbanorm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="normalize a batch with every op on a backend, check and time it")
    demo.add_argument("--backend", default="cpu", choices=("numpy", "cpu", "cuda"))
    demo.add_argument("--shape", type=int, nargs=4, default=(32, 16, 28, 28), metavar=("N", "C", "H", "W"))
    demo.add_argument("--repeat", type=int, default=5, help="timing repeats (best is shown)")
    sub.add_parser("info", help="versions, available backends, threading, cache directory")
    from ._bench import add_arguments as _bench_arguments
    _bench_arguments(sub.add_parser("bench", help="time every op against copy bandwidth, numpy and torch"))
    args = parser.parse_args(argv)
    if args.command == "bench":
        from ._bench import run_command
        return run_command(args)
    if args.command in (None, "demo"):
        if args.command is None:
            args = parser.parse_args(["demo", *(argv or sys.argv[1:])])
        return _demo(args)
    return _info(args)


if __name__ == "__main__":
    sys.exit(main())

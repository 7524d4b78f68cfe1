"""Compile every CUDA kernel the simulator ran to PTX for a real GPU, without a GPU.

The CUDA simulator runs kernels as Python: code that a GPU compile rejects (a
device function returning a slice of shared memory, an unsupported NumPy call)
or that silently computes float32 work in float64 passes there unnoticed. This
file closes the gap in two steps, each in its own interpreter:

1. ``record``: imported by ``conftest.py`` when ``NUMBANORM_RECORD_KERNELS`` names
   a file and the simulator is on; every kernel launch adds its function and
   argument types to a set, written to that file when the tests end.
2. ``python tests/ptx_check.py RECORD [--cc 9.0]``: compiles each recorded
   (kernel, signature) with NVVM for that compute capability (no driver or GPU
   needed, only the CUDA toolkit libraries, e.g. ``pip install numba-cuda[cu12]``),
   and fails when one does not compile, when a kernel given only float32 and
   float16 arrays has float64 arithmetic in its PTX, or when a kernel of
   ``numbanorm.cuda`` never ran in the recorded tests.

``tests/test_cuda_ptx.py`` runs both steps.
"""
from __future__ import annotations

import argparse
import atexit
import importlib
import pickle
import re
import sys
import types as pytypes

# ----------------------------------------------------------------------------- step 1 (simulator)


def _argument_type(value):
    import numba
    from numba.core import types
    if hasattr(value, "_ary"):          # a simulator device array
        value = value._ary
    t = numba.typeof(value)
    if isinstance(t, types.Array):     # device arrays are never read-only
        t = types.Array(t.dtype, t.ndim, t.layout)
    return t


def record(path):
    """Record every simulated kernel launch's (module, name, argument types) into ``path`` at exit."""
    from numba.cuda.simulator import kernel as simulator
    FakeCUDAKernel = simulator.FakeCUDAKernel
    seen = set()
    launch = FakeCUDAKernel.__call__

    def recording_launch(self, *args):
        fn = self.fn
        is_launch = not self._device and not simulator._kernel_context   # not a device-function call
        if is_launch and fn.__module__.startswith("numbanorm."):
            seen.add((fn.__module__, fn.__name__, tuple(_argument_type(a) for a in args)))
        return launch(self, *args)

    FakeCUDAKernel.__call__ = recording_launch

    def save():
        with open(path, "wb") as f:
            pickle.dump(sorted(seen, key=repr), f)

    atexit.register(save)


# ----------------------------------------------------------------------------- step 2 (NVVM)

F64_ARITHMETIC = re.compile(r"^\s*(add|sub|mul|div|fma|rcp|sqrt|neg|abs|min|max)(\.[a-z]+)*\.f64\b", re.M)


def pretend_a_device(cc):
    """Let numba-cuda compile without a driver: kernels ask for the current device's
    compute capability when they compile the device functions they call."""
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher
    cuda.is_available = lambda: True   # numbanorm.cuda checks this at import
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)


def compile_all(entries, cc):
    """``(failures, float64_kernels, compiled)``: messages for kernels that did not compile,
    names of float32-only kernels with float64 arithmetic, and the count compiled."""
    from numba import cuda
    from numba.core import types
    failures, float64_kernels = [], []
    for module, name, argtypes in entries:
        kernel = getattr(importlib.import_module(module), name)
        label = f"{module}.{name}{tuple(str(t) for t in argtypes)}"
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=cc)
        except Exception as exc:  # report every kernel, not only the first failure
            failures.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            continue
        dtypes = {t.dtype for t in argtypes if isinstance(t, types.Array)}
        if dtypes and dtypes <= {types.float32, types.float16} and F64_ARITHMETIC.search(ptx):
            float64_kernels.append(label)
    return failures, float64_kernels, len(entries) - len(failures)


def defined_kernels():
    """``(module, name)`` of every kernel (not device function) the ``numbanorm.cuda`` package defines."""
    import pkgutil

    import numbanorm.cuda as package
    from numba.cuda.dispatcher import CUDADispatcher
    found = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, CUDADispatcher) and not obj.targetoptions.get("device")
                    and obj.py_func.__module__ == module.__name__):
                found.add((module.__name__, obj.py_func.__name__))
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", help="the file step 1 wrote")
    parser.add_argument("--cc", default="9.0", help="compute capability to compile for (default 9.0, H100)")
    args = parser.parse_args(argv)
    cc = tuple(int(p) for p in args.cc.split("."))
    with open(args.record, "rb") as f:
        entries = pickle.load(f)
    pretend_a_device(cc)
    failures, float64_kernels, compiled = compile_all(entries, cc)
    never_run = sorted(defined_kernels() - {(module, name) for module, name, _ in entries})
    modules = sorted({module.rsplit(".", 1)[1] for module, _, _ in entries})
    print(f"{compiled} of {len(entries)} kernel signatures ({len({(m, n) for m, n, _ in entries})} kernels "
          f"of {', '.join(modules)}) compiled to PTX for sm_{cc[0]}{cc[1]}")
    for line in failures:
        print("did not compile:", line)
    for line in float64_kernels:
        print("float64 arithmetic in a float32 kernel:", line)
    for module, name in never_run:
        print(f"never launched by the recorded tests, so not checked: {module}.{name}")
    return 1 if failures or float64_kernels or never_run else 0


if __name__ == "__main__":
    sys.exit(main())

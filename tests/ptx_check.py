"""Compile every CUDA kernel the simulator ran to PTX for a real GPU, without a GPU.

The CUDA simulator runs kernels as Python: code that a GPU compile rejects (a
device function returning a slice of shared memory, an unsupported NumPy call)
or that silently computes float32 work in float64 passes there unnoticed. This
file closes the gap in two steps, each in its own interpreter:

1. ``record``: imported by ``conftest.py`` when ``NUMBANORM_RECORD_KERNELS`` names
   a file and the simulator is on; every kernel launch adds its kernel (module,
   qualified name and, for kernels that a factory makes, the ``factory_key`` that
   rebuilds it) and argument types to a set, written to that file when the tests end.
2. ``python tests/ptx_check.py RECORD [--cc 9.0]``: compiles each recorded
   (kernel, signature) with NVVM for that compute capability, with the kernel's
   launch bounds as on a GPU (no driver or GPU needed, only the CUDA toolkit
   libraries, e.g. ``pip install numba-cuda[cu12]``), and fails when one does not
   compile, when a kernel given only float32 and float16 arrays has float64
   arithmetic in its PTX, or when a kernel of ``numbanorm.cuda`` never ran in the
   recorded tests.

``tests/test_cuda_ptx.py`` runs both steps. The compile helpers are those of the
static GPU check, ``numbanorm/cuda/_static.py`` (``tests/test_gpu_static.py``),
which goes further: registers, spills, shared memory and occupancy of the
launches that large shapes make.
"""
from __future__ import annotations

import argparse
import atexit
import importlib
import importlib.util
import os
import pickle
import sys


def load_static():
    """``numbanorm/cuda/_static.py``, which holds the compile helpers shared with the static GPU
    check, loaded by its path: importing it as ``numbanorm.cuda._static`` would import
    ``numbanorm.cuda``, which needs a GPU, the simulator, or :func:`pretend_a_device` first."""
    name = "numbanorm_gpu_static"
    if name not in sys.modules:
        package = importlib.util.find_spec("numbanorm").submodule_search_locations[0]
        spec = importlib.util.spec_from_file_location(name, os.path.join(package, "cuda", "_static.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


static = load_static()
pretend_a_device = static.pretend_a_device
F64_ARITHMETIC = static.F64_ARITHMETIC

# ----------------------------------------------------------------------------- step 1 (simulator)


def record(path):
    """Record every simulated kernel launch's (kernel identity, argument types) into ``path`` at exit.

    The identity is :func:`_static.kernel_identity`'s ``(module, qualname, factory_key)``,
    so kernels that factories make are rebuilt in step 2.
    """
    from numba.cuda.simulator import kernel as simulator
    FakeCUDAKernel = simulator.FakeCUDAKernel
    seen = set()
    launch = FakeCUDAKernel.__call__

    def recording_launch(self, *args):
        fn = self.fn
        is_launch = not self._device and not simulator._kernel_context   # not a device-function call
        if is_launch and fn.__module__.startswith("numbanorm."):
            seen.add((static.kernel_identity(fn), tuple(static.argument_type(a) for a in args)))
        return launch(self, *args)

    FakeCUDAKernel.__call__ = recording_launch

    def save():
        with open(path, "wb") as f:
            pickle.dump(sorted(seen, key=repr), f)

    atexit.register(save)


# ----------------------------------------------------------------------------- step 2 (NVVM)


def compile_all(entries, cc):
    """``(failures, float64_kernels, compiled)``: messages for kernels that did not compile,
    names of float32-only kernels with float64 arithmetic, and the count compiled. Each kernel
    is compiled as on a GPU, with its launch bounds (see ``_static.compile_ptx``)."""
    failures, float64_kernels = [], []
    for identity, argtypes in entries:
        label = f"{static.kernel_name(*identity)}({static.short_signature(argtypes)})"
        try:
            ptx = static.compile_ptx(static.resolve_kernel(*identity), argtypes, cc)
        except Exception as exc:  # report every kernel, not only the first failure
            failures.append(f"{label}: {static.error_summary(exc)}")
            continue
        if static.has_float64_arithmetic(ptx, argtypes):
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
    never_run = sorted(defined_kernels() - {(module, name) for (module, name, _), _ in entries})
    modules = sorted({module.rsplit(".", 1)[1] for (module, _, _), _ in entries})
    print(f"{compiled} of {len(entries)} kernel signatures ({len({i for i, _ in entries})} kernels "
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

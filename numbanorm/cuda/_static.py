"""The static GPU check: every launch the package makes, measured against real GPUs without one.

CI has no GPU and runs the kernels in Numba's CUDA simulator, which knows
nothing of registers, spills or occupancy. This module finds out, for a table
of shapes (:data:`CASES`), what a GPU would get:

1. **dry run** (simulator on, :func:`dry_run`): ``numbanorm.cuda`` is imported
   with the launch choices of a GPU (:func:`import_with_gpu_geometry`), the
   public ops are called, forward and backward, on simulator device arrays
   (``np.empty`` underneath: large shapes cost nothing), and every kernel launch
   is recorded - kernel, argument types, grid, block, dynamic shared memory -
   instead of run.
2. **compile** (simulator off, no driver needed: :func:`pretend_a_device`):
   each distinct (kernel, signature) is compiled to PTX once, with the
   kernel's launch bound, then assembled by ``ptxas -v`` for every compute
   capability (registers, spills, static shared memory, stack) and, for sm_90,
   disassembled by ``nvdisasm`` to find its hot loop (:func:`hot_loop`).
3. **check** (:func:`check`): every launch against the hardware - registers
   and shared memory of a block, spills, float64 arithmetic in float32/float16
   kernels, and the theoretical occupancy of bandwidth-bound kernels on sm_90.

Beside step 2, **count reads** (simulator on, :func:`count_reads`): the row
ops run on a row of each length of a second table (:data:`READ_CASES`) with a
GPU's launch choices, and every element the kernels read of x and dy is
counted: global reads per element, checked against the read-once targets.

Steps 1 and 2 need numba configured in opposite ways, so each runs in an
interpreter of its own, started by :func:`run` as ``python _static.py STEP``.
This file imports nothing of ``numbanorm.cuda`` at import (that needs a GPU or
the simulator): outside the simulator, load it by its path, as
``python -m numbanorm gpu-report`` and the tests do.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import math
import os
import pickle
import re
import subprocess
import sys
import tempfile
import threading
import time
import types as pytypes
from concurrent.futures import ThreadPoolExecutor

# ----------------------------------------------------------------------------- what is checked

CCS = ((7, 0), (8, 0), (9, 0))      # compute capabilities: V100, A100, H100
SASS_CC = (9, 0)                    # the one whose machine code is read
OCCUPANCY_CC = (9, 0)
MIN_OCCUPANCY = 0.5                 # of a bandwidth-bound kernel
SHARED_PER_BLOCK = 48 * 1024        # static + dynamic shared memory of a block, without opting in
REGISTERS_PER_BLOCK = 65536
REGISTER_GRANULE = 256              # registers are allocated per warp in units of this many
SUB_PARTITIONS = 4                  # a block's warps are counted in multiples of this (see _registers_of_block)

# Kernels that are not bandwidth-bound (one thread per channel or per row of a small matrix, the
# second stage of a reduction): their occupancy is reported, not checked. Every other kernel is.
# Names are "module.function", the module without "numbanorm.cuda.", factories by their name.
NOT_BANDWIDTH_BOUND = frozenset({
    "_reduce._column_sums", "channelwise._merge", "channelwise._frozen_rstd", "channelwise._update_running",
    "channelwise._update_running_stats",
    "spectral_norm._matvec", "spectral_norm._matvec_t", "spectral_norm._row_inner",
})

# Elements one trip of a kernel's hot loop handles, for "SASS instructions per element": a number,
# or for a factory's kernels a function of the factory's arguments. Kernels not listed get an
# estimate from the loop's memory instructions (:func:`elements_per_trip`), marked "~".
ELEMENTS_PER_ITERATION = {
    "rowwise._forward_kernel": lambda per, *rest: per,    # a lane's `per` values of a row a trip
    "rowwise._backward_kernel": lambda per, *rest: per,
}

ROW_SHAPES = ((4096, 1024), (4096, 4096), (4096, 8192), (1024, 16384), (64, 65536), (32, 64), (256, 1024))


@dataclasses.dataclass(frozen=True)
class Case:
    """One call of a public op, forward and backward, on device arrays of ``shape``."""
    op: str
    shape: tuple
    dtype: str = "float32"
    options: tuple = ()     # (name, value) pairs: keyword arguments beyond the arrays

    @property
    def label(self):
        options = "".join(f" {k}={v}" for k, v in self.options)
        return f"{self.op} {self.shape} {self.dtype}{options}"


CASES = (
    *(Case(op, shape) for op in ("layer_norm", "rms_norm") for shape in ROW_SHAPES),
    *(Case(op, shape, dtype) for op, shape in (("layer_norm", (4096, 4096)), ("rms_norm", (4096, 1024)))
      for dtype in ("float16", "float64")),
    Case("layer_norm", (1024, 6000)),              # rows that do not fill the lanes, dy in shared memory
    Case("layer_norm", (1024, 8192), "float16"),
    Case("group_norm", (32, 256, 64, 64), options=(("num_groups", 32),)),
    Case("group_norm", (32, 64, 56, 56), options=(("num_groups", 32),)),
    Case("group_norm", (32, 64, 56, 56), "float16", options=(("num_groups", 32),)),
    Case("instance_norm", (32, 64, 56, 56)),
    *(Case("batch_norm", shape, dtype, (("training", training), ("axis", axis)))
      for shape, axis in (((32, 64, 56, 56), 1), ((32, 56, 56, 64), -1))
      for training in (True, False) for dtype in ("float32",)),
    Case("batch_norm", (32, 64, 56, 56), "float16", (("training", True), ("axis", 1))),
    Case("batch_norm", (32, 64, 56, 56), "float64", (("training", True), ("axis", 1))),
    Case("weight_norm", (1024, 1024)),
    Case("spectral_norm", (1024, 1024)),
    Case("local_response_norm", (32, 64, 28, 28), options=(("size", 5),)),
)


# ----------------------------------------------------------------------------- kernels and their types

def argument_type(value):
    """The Numba type a kernel launch gives ``value`` (simulator device arrays as device arrays)."""
    import numba
    from numba.core import types
    if hasattr(value, "_ary"):          # a simulator device array
        value = value._ary
    t = numba.typeof(value)
    if isinstance(t, types.Array):     # device arrays are never read-only
        t = types.Array(t.dtype, t.ndim, t.layout)
    return t


def kernel_identity(py_func):
    """``(module, qualname, factory_key)`` of a kernel's Python function.

    ``factory_key`` is the function's ``factory_key`` attribute, ``(module,
    factory_name, args)``, set by kernels that a factory makes (closures over
    constants), else None: :func:`resolve_kernel` rebuilds the kernel from either.
    """
    return py_func.__module__, py_func.__qualname__, getattr(py_func, "factory_key", None)


def resolve_kernel(module, qualname, factory_key=None):
    """The kernel (a dispatcher) that :func:`kernel_identity` named, imported or rebuilt."""
    if factory_key is not None:
        factory_module, factory, args = factory_key
        return getattr(importlib.import_module(factory_module), factory)(*args)
    if "<locals>" in qualname:
        raise LookupError(f"{module}.{qualname} is made inside a function: give it a factory_key "
                          "(module, factory name, args) so that it can be rebuilt")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def kernel_name(module, qualname, factory_key=None):
    """A short name: ``rowwise._moments``, or a factory's ``rowwise._forward_kernel(8)``."""
    if factory_key is not None:
        module, qualname, args = factory_key
        return f"{module.rsplit('.', 1)[-1]}.{qualname}({', '.join(map(repr, args))})"
    return f"{module.rsplit('.', 1)[-1]}.{qualname}"


def _family(module, qualname, factory_key=None):
    """The name the tables above use: ``module.function``, a factory's kernels by the factory's name."""
    if factory_key is not None:
        module, qualname = factory_key[:2]
    return f"{module.rsplit('.', 1)[-1]}.{qualname}"


_SHORT_TYPES = {"float16": "f16", "float32": "f32", "float64": "f64", "int64": "i64", "int32": "i32",
                "uint64": "u64", "boolean": "bool"}


def short_signature(argtypes):
    """``f32[2]x3, f32[3F], i64x2, bool``: array dtypes, ndim and layout (none for C), repeats counted."""
    from numba.core import types
    names = []
    for t in argtypes:
        if isinstance(t, types.Array):
            layout = "" if t.layout == "C" else t.layout
            names.append(f"{_SHORT_TYPES.get(str(t.dtype), str(t.dtype))}[{t.ndim}{layout}]")
        elif isinstance(t, types.UniTuple):
            names.append(f"({_SHORT_TYPES.get(str(t.dtype), str(t.dtype))}x{t.count})")
        else:
            names.append(_SHORT_TYPES.get(str(t), str(t)))
    runs = []
    for name in names:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    return ", ".join(name if n == 1 else f"{name}x{n}" for name, n in runs)


# ----------------------------------------------------------------------------- compiling without a GPU

F64_ARITHMETIC = re.compile(r"^\s*(add|sub|mul|div|fma|rcp|sqrt|neg|abs|min|max)(\.[a-z]+)*\.f64\b", re.M)


def pretend_a_device(cc):
    """Let numba-cuda compile without a driver: kernels ask for the current device's
    compute capability when they compile the device functions they call."""
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher
    cuda.is_available = lambda: True   # numbanorm.cuda checks this at import
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)


def launch_bounds(kernel):
    """The ``launch_bounds`` a kernel is compiled with on a GPU: its ``launch_bounds`` option, else
    ``(py_func.max_threads,)`` (see ``_launch.kernel``), else None."""
    bounds = getattr(kernel, "targetoptions", {}).get("launch_bounds")
    if bounds is None and getattr(kernel.py_func, "max_threads", None):
        bounds = (kernel.py_func.max_threads,)
    return bounds


def compile_ptx(kernel, argtypes, cc):
    """PTX for ``kernel`` (a dispatcher) and ``argtypes``, as a GPU of ``cc`` compiles it:
    with its launch bounds and fastmath option. Needs :func:`pretend_a_device` first."""
    from numba import cuda
    options = getattr(kernel, "targetoptions", {})
    ptx, _ = cuda.compile_ptx(kernel.py_func, tuple(argtypes), cc=cc, launch_bounds=launch_bounds(kernel),
                              fastmath=options.get("fastmath", False))
    return ptx


def has_float64_arithmetic(ptx, argtypes):
    """Whether a kernel given only float32/float16 arrays does float64 arithmetic."""
    from numba.core import types
    dtypes = {t.dtype for t in argtypes if isinstance(t, types.Array)}
    return bool(dtypes) and dtypes <= {types.float32, types.float16} and bool(F64_ARITHMETIC.search(ptx))


@functools.lru_cache(maxsize=None)
def tool(name):
    """The path of a CUDA tool from the NVIDIA wheels (``ptxas``: nvidia-cuda-nvcc-cu12,
    ``nvdisasm``: nvidia-cuda-nvdisasm), else from PATH; None when there is none."""
    import importlib.util
    import shutil
    for package in ("nvidia.cuda_nvcc", "nvidia.cuda_nvdisasm", "nvidia.cu13", "nvidia.cu12"):
        try:
            spec = importlib.util.find_spec(package)
        except ImportError:
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(folder, "bin", name)
            if os.access(path, os.X_OK):
                return path
    return shutil.which(name)


@dataclasses.dataclass
class Resources:
    """What ``ptxas -v`` says of a kernel."""
    registers: int = 0
    spill_stores: int = 0     # bytes, summed over the kernel and any function it calls
    spill_loads: int = 0
    shared: int = 0           # static shared memory, bytes
    stack: int = 0            # the kernel's stack frame (local arrays, spills), bytes


def parse_ptxas(text):
    """:class:`Resources` from the output of ``ptxas -v`` for a PTX file with one kernel."""
    entry = text.find("Compiling entry function")
    if entry < 0:
        raise ValueError("no entry function in ptxas' output:\n" + text)
    out = Resources()
    for stores, loads in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text):
        out.spill_stores += int(stores)
        out.spill_loads += int(loads)
    body = text[entry:]
    if m := re.search(r"Used (\d+) registers", body):
        out.registers = int(m.group(1))
    if m := re.search(r"Used \d+ registers[^\n]*?(\d+) bytes smem", body):
        out.shared = int(m.group(1))
    if m := re.search(r"(\d+) bytes stack frame", body):
        out.stack = int(m.group(1))
    return out


def ptxas(ptx, cc, cubin=None):
    """Assemble ``ptx`` for ``sm_XY``; :class:`Resources`, and the machine code in ``cubin`` if given."""
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "kernel.ptx")
        with open(source, "w") as f:
            f.write(ptx)
        ran = subprocess.run([tool("ptxas"), f"-arch=sm_{cc[0]}{cc[1]}", "-v", source, "-o",
                              cubin or os.path.join(tmp, "kernel.cubin")], capture_output=True, text=True)
    if ran.returncode != 0:
        raise RuntimeError(f"ptxas failed for sm_{cc[0]}{cc[1]}: {ran.stderr.strip()}")
    return parse_ptxas(ran.stdout + ran.stderr)


def disassemble(cubin):
    """The SASS of a cubin, from ``nvdisasm``."""
    ran = subprocess.run([tool("nvdisasm"), "-c", cubin], capture_output=True, text=True)
    if ran.returncode != 0:
        raise RuntimeError(f"nvdisasm failed: {ran.stderr.strip()}")
    return ran.stdout


# ----------------------------------------------------------------------------- reading SASS

_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s*(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^([.$\w]+):\s*$")
_TARGET = re.compile(r"`\(([^)]+)\)")
_FUNCTION = re.compile(r"^\s*\.type\s+\S+,@function")
_WIDTH = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}


@dataclasses.dataclass
class Loop:
    """The hot loop of a kernel's SASS: its instructions and memory accesses."""
    instructions: int
    calls: int                  # calls of subroutines (64-bit division...), not counted above
    memory: dict                # class -> list of access widths in bytes: LDG, STG, LDS, STS, LDL, STL


def sass_instructions(sass):
    """``[(address, opcode, operands)]`` of the first function (the kernel), and its labels."""
    instructions, labels, pending, functions = [], {}, [], 0
    for line in sass.splitlines():
        if _FUNCTION.match(line):
            functions += 1
            if functions > 1:      # the subroutines after the kernel
                break
        elif m := _LABEL.match(line):
            pending.append(m.group(1))
        elif m := _INSTRUCTION.match(line):
            address = int(m.group(1), 16)
            for label in pending:
                labels[label] = address
            pending = []
            instructions.append((address, m.group(3), m.group(4)))
    return instructions, labels


def loops(sass):
    """``[(first, last)]`` addresses of the loops of the kernel: from a label to the last branch
    back to it."""
    instructions, labels = sass_instructions(sass)
    ends = {}
    for address, opcode, operands in instructions:
        if opcode.split(".")[0] == "BRA" and (m := _TARGET.search(operands)):
            start = labels.get(m.group(1))
            if start is not None and start < address:   # (not the "BRA to itself" after the last EXIT)
                ends[start] = max(ends.get(start, start), address)
    return sorted(ends.items())


def hot_loop(sass):
    """The largest innermost loop of the kernel (a :class:`Loop`), or None when it has no loop."""
    instructions, _ = sass_instructions(sass)
    found = loops(sass)
    innermost = [(a, b) for a, b in found if not any((a, b) != (c, d) and a <= c and d <= b for c, d in found)]
    best = None
    for first, last in innermost:
        body = [(op, rest) for address, op, rest in instructions if first <= address <= last and op != "NOP"]
        memory = collections.defaultdict(list)
        for opcode, _ in body:
            parts = opcode.split(".")
            kind = {"LD": "LDG", "ST": "STG"}.get(parts[0], parts[0])   # generic addressing: global, mostly
            if kind in ("LDG", "STG", "LDS", "STS", "LDL", "STL"):
                memory[kind].append(max([_WIDTH.get(p, 0) for p in parts[1:]] + [4]))
        loop = Loop(len(body), sum(op.startswith("CALL") for op, _ in body), dict(memory))
        if best is None or loop.instructions > best.instructions:
            best = loop
    return best


def elements_per_trip(loop, itemsize):
    """An estimate of the elements a trip of ``loop`` handles: the greatest common divisor of the
    elements its global and shared loads and stores move (an unrolled loop repeats each of them)."""
    counts = [sum(max(1, width // itemsize) for width in widths)
              for kind, widths in loop.memory.items() if kind in ("LDG", "STG", "LDS", "STS")]
    return math.gcd(*counts) if counts else 1


# ----------------------------------------------------------------------------- step 1: the dry run

def import_with_gpu_geometry(runnable=False):
    """Import ``numbanorm.cuda`` in a simulator process with the launch choices of a GPU.

    Every module of the package is imported with ``numba.config.ENABLE_CUDASIM``
    off, so ``_launch`` takes the GPU's geometry (blocks of 256, rows of 1024
    lanes...) and ``_reduce`` its warp-shuffle reduction and scratch sizes;
    except ``_arrays``, which moves device arrays and so must use the
    simulator's. From then on ``cuda.jit`` (the simulator's) drops the options
    it lacks (``launch_bounds``), for the kernels that factories make later.
    Kernels imported so can be launched only by :func:`record_launches`, which
    does not run them: the simulator has no warp shuffles. With ``runnable``,
    ``_reduce`` is the simulator's too (a tree in shared memory, more scratch),
    and the kernels run, with a GPU's blocks, rows per lane and partial rows.
    """
    import importlib.util
    import inspect

    from numba import config, cuda
    if not config.ENABLE_CUDASIM:
        raise RuntimeError("the dry run needs the simulator: NUMBA_ENABLE_CUDASIM=1")
    if "numbanorm.cuda" in sys.modules:
        raise RuntimeError("numbanorm.cuda is imported already, with the simulator's launch choices")
    simulator_jit = cuda.jit
    accepted = set(inspect.signature(simulator_jit).parameters)

    def jit(*args, **options):
        return simulator_jit(*args, **{k: v for k, v in options.items() if k in accepted})

    import numbanorm
    spec = importlib.util.find_spec("numbanorm.cuda")
    package = importlib.util.module_from_spec(spec)   # its __init__ runs last, below
    sys.modules[spec.name] = package
    cuda.jit, config.ENABLE_CUDASIM = jit, 0
    try:
        launch = importlib.import_module("numbanorm.cuda._launch")
        launch.SIM = True
        importlib.import_module("numbanorm.cuda._arrays")
        if runnable:
            config.ENABLE_CUDASIM = 1
            importlib.import_module("numbanorm.cuda._reduce")
            config.ENABLE_CUDASIM = 0
        launch.SIM = False
        spec.loader.exec_module(package)
        numbanorm.cuda = package
    except BaseException:
        cuda.jit = simulator_jit
        for name in [n for n in sys.modules if n == "numbanorm.cuda" or n.startswith("numbanorm.cuda.")]:
            del sys.modules[name]
        raise
    finally:
        config.ENABLE_CUDASIM = 1
    return package


def record_launches(launches, case=None):
    """Make simulated kernel launches append a record to ``launches`` instead of running.

    A record is a dict: ``kernel`` (:func:`kernel_identity`), ``max_threads``,
    ``argtypes``, ``grid``, ``block``, ``shared`` (dynamic bytes) and ``case``
    (``case[0]``, the label of the call being made). Calls of device functions
    are not launches.
    """
    from numba.cuda.simulator import kernel as simulator
    FakeCUDAKernel = simulator.FakeCUDAKernel
    configure, call = FakeCUDAKernel.__getitem__, FakeCUDAKernel.__call__

    def configured(self, configuration):
        self.dry_run_shared = configuration[3] if len(configuration) == 4 else 0
        return configure(self, configuration)

    def launched(self, *args):
        if self._device or simulator._kernel_context:
            return call(self, *args)
        launches.append({"kernel": kernel_identity(self.fn), "max_threads": getattr(self.fn, "max_threads", None),
                         "argtypes": tuple(argument_type(a) for a in args), "grid": tuple(self.grid_dim),
                         "block": tuple(self.block_dim), "shared": getattr(self, "dry_run_shared", 0),
                         "case": case[0] if case else None})
        self.dry_run_shared = 0

    FakeCUDAKernel.__getitem__, FakeCUDAKernel.__call__ = configured, launched


def call_op(case):
    """Run ``case``'s op forward and backward on the cuda backend, on uninitialized device arrays
    (small parameters are ones, so host code between the launches sees sane values)."""
    from numba import cuda

    import numbanorm as nbn
    x, dy = cuda.device_array(case.shape, case.dtype), cuda.device_array(case.shape, case.dtype)
    getattr(nbn, case.op + "_backward")(dy, call_forward(case, x))


def call_forward(case, x):
    """Run ``case``'s op forward on the cuda backend on the device array ``x``; its cache."""
    import numpy as np
    from numba import cuda

    import numbanorm as nbn
    dtype = np.dtype(case.dtype)
    options = dict(case.options)
    shape = case.shape

    def ones(n):
        return cuda.to_device(np.ones(n, dtype))

    args, params = (x,), {}
    if case.op in ("layer_norm", "rms_norm"):
        params["weight"] = ones(shape[-1])
        if case.op == "layer_norm":
            params["bias"] = ones(shape[-1])
    elif case.op in ("group_norm", "instance_norm"):
        params.update(weight=ones(shape[1]), bias=ones(shape[1]))
        if case.op == "group_norm":
            args = (x, options.pop("num_groups"))
    elif case.op == "batch_norm":
        channels = shape[options.get("axis", 1)]
        params.update(weight=ones(channels), bias=ones(channels), running_mean=ones(channels),
                      running_var=ones(channels))
    elif case.op == "local_response_norm":
        args = (x, options.pop("size"))
    elif case.op in ("weight_norm", "spectral_norm"):
        args = (x, ones(shape[0]))
    else:
        raise ValueError(f"no dry run for op {case.op!r}")
    _, cache = getattr(nbn, case.op + "_forward")(*args, **params, **options, backend="cuda")
    return cache


def dry_run(cases):
    """Step 1, in a simulator process: ``(launches, errors)`` of calling every case's op."""
    import warnings
    import_with_gpu_geometry()
    launches, errors, current = [], [], [None]
    record_launches(launches, current)
    for case in cases:
        current[0] = case.label
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # the uninitialized data gives NaNs on the host
                call_op(case)
        except Exception as exc:  # report every case, not only the first failure
            errors.append(f"dry run of {case.label} failed: {type(exc).__name__}: {exc}")
    return launches, errors


# ----------------------------------------------------------------------------- step 1b: global reads, counted

# Row shapes whose global reads per element are counted: a row of each length of ROW_SHAPES, and
# group and instance norm rows as long as the table's (the same kernels on fewer rows: the
# simulator runs a block of 1024 threads at about 10 us per element and thread).
READ_CASES = (
    *(Case(op, (1, L)) for op in ("layer_norm", "rms_norm") for L in (1024, 4096, 8192, 16384, 65536)),
    Case("layer_norm", (1, 4096), "float64"),
    Case("group_norm", (1, 2, 56, 56), options=(("num_groups", 1),)),    # rows of (32, 64, 56, 56), 32 groups
    Case("group_norm", (1, 8, 64, 64), options=(("num_groups", 1),)),    # rows of (32, 256, 64, 64), 32 groups
    Case("instance_norm", (1, 1, 56, 56)),
)
# Targets (issue 19): x read once by a row forward of up to 16384 float32 values, x and dy
# once each by a row backward of up to 8192. The forward's "once" allows each warp's read of
# a row's first value (its pivot): one more element a warp, 1/32 of a short row's at worst.
READ_ONCE = {"forward": 16384, "backward": 8192}
ONCE = {"forward": 1 + 1 / 32, "backward": 1}


def row_length(case):
    """The length of the rows ``case``'s op normalizes."""
    if case.op == "group_norm":
        return math.prod(case.shape[1:]) // dict(case.options)["num_groups"]
    if case.op == "instance_norm":
        return math.prod(case.shape[2:])
    return case.shape[-1]


class _Barrier:
    """``syncthreads`` for the simulated threads of a block: releases them when every thread still
    running waits (threads that have returned no longer count), as the simulator's polling
    block manager does, without its polling (which costs minutes for blocks of 1024 threads)."""

    def __init__(self, threads):
        self.condition = threading.Condition()
        self.running, self.waiting, self.generation = threads, 0, 0

    def wait(self):
        with self.condition:
            generation = self.generation
            self.waiting += 1
            if self.waiting == self.running:
                self._release()
            while generation == self.generation:
                self.condition.wait()

    def leave(self):
        with self.condition:
            self.running -= 1
            if self.waiting and self.waiting == self.running:
                self._release()

    def _release(self):
        self.waiting, self.generation = 0, self.generation + 1
        self.condition.notify_all()


def _run_block(self, grid_point, *args):
    """``BlockManager.run`` with a :class:`_Barrier`: start the block's threads, wait for them all."""
    from numba.cuda.simulator.kernel import BlockThread
    import numpy as np
    barrier = _Barrier(math.prod(self._block_dim))

    def target():
        try:
            self._f(*args)
        finally:
            barrier.leave()

    threads = [BlockThread(target, self, grid_point, point, self._debug) for point in np.ndindex(*self._block_dim)]
    for thread in threads:
        thread.syncthreads = barrier.wait
        thread.start()
    for thread in threads:
        thread.join()
    for thread in threads:
        if thread.exception:
            raise thread.exception[0].with_traceback(thread.exception[1])


def count_reads(cases):
    """Step 1b, in a simulator process: ``{case label: {"forward": x reads per element,
    "backward": (x reads, dy reads) per element}}``, counting the elements the kernels read of x
    and dy while the op runs with a GPU's launch choices (:func:`import_with_gpu_geometry` with
    ``runnable``; the long-row kernels cache as long a prefix of a row as on a GPU, whose
    reduction scratch is smaller than the simulator's).

    A warp's lanes run the same instructions: the ``k``-th reads of its lanes are one
    instruction, and lanes of it reading the same element (a row's first value, its pivot)
    make one read, so a read is a distinct (element, warp, ``k``).
    """
    import numpy as np
    from numba import cuda
    from numba.cuda.simulator import kernel as simulator
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    import numbanorm as nbn
    cuda_package = import_with_gpu_geometry(runnable=True)
    rowwise, reduce, warp_size = cuda_package.rowwise, cuda_package._reduce, cuda_package._launch.WARP
    rowwise.cache_length = functools.partial(rowwise.cache_length, scratch=reduce.gpu_scratch_bytes)
    reads, lock = collections.defaultdict(set), threading.Lock()
    getitem, run_block = FakeCUDAArray.__getitem__, simulator.BlockManager.run

    def root(a):
        while isinstance(a.base, np.ndarray):
            a = a.base
        return id(a)

    def counted(self, idx):
        value = getitem(self, idx)
        if not isinstance(value, FakeCUDAArray):   # an element, not a view
            thread = threading.current_thread()
            k = thread.__dict__.get("reads", 0)
            thread.reads = k + 1
            index = idx if isinstance(idx, tuple) else (idx,)
            element = self._ary.__array_interface__["data"][0] + sum(
                int(i) * stride for i, stride in zip(index, self._ary.strides))
            warp = (tuple(thread.blockIdx), thread.thread_id // warp_size)
            with lock:
                reads[root(self._ary)].add((element, warp, k))
        return value

    FakeCUDAArray.__getitem__, simulator.BlockManager.run = counted, _run_block
    try:
        out = {}
        for case in cases:
            rng = np.random.default_rng(0)
            x, dy = (cuda.to_device(rng.standard_normal(case.shape).astype(case.dtype)) for _ in range(2))
            reads.clear()
            cache = call_forward(case, x)
            forward = len(reads[root(x._ary)]) / x.size
            reads.clear()
            getattr(nbn, case.op + "_backward")(dy, cache)
            out[case.label] = {"forward": forward, "backward": (len(reads[root(x._ary)]) / x.size,
                                                                len(reads[root(dy._ary)]) / dy.size)}
    finally:
        FakeCUDAArray.__getitem__, simulator.BlockManager.run = getitem, run_block
    return out


def check_reads(cases, reads):
    """Violations: float32 rows of ``cases`` read more than once (``reads`` from
    :func:`count_reads`) where READ_ONCE says once."""
    violations = []
    for case in cases:
        got, L = reads[case.label], row_length(case)
        for phase, counts in (("forward", (got["forward"],)), ("backward", got["backward"])):
            if case.dtype == "float32" and L <= READ_ONCE[phase] and max(counts) > ONCE[phase]:
                violations.append(f"{case.label}: the {phase} reads {'x' if phase == 'forward' else 'x, dy'} "
                                  f"{', '.join(f'{n:.3f}' for n in counts)} times an element; rows of up to "
                                  f"{READ_ONCE[phase]} float32 values should be read once")
    return violations


# ----------------------------------------------------------------------------- step 2: compile and check

def _registers_of_block(threads, registers):
    """Registers a block takes as the launch check counts them: per warp rounded up to the
    allocation unit, warps rounded up to the SM's sub-partitions (as cuda_occupancy.h does)."""
    per_warp = -(-registers * 32 // REGISTER_GRANULE) * REGISTER_GRANULE
    warps = -(-threads // 32)
    return per_warp * (-(-warps // SUB_PARTITIONS) * SUB_PARTITIONS)


def compile_all(jobs, ccs, workers=None):
    """Compile every ``(identity, argtypes)`` of ``jobs`` once (PTX for the lowest of ``ccs``, which
    every later GPU runs) and assemble it for each of ``ccs``; ``{job: result dict}``."""
    ptx_cc = min(ccs)
    pretend_a_device(ptx_cc)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        pending = []
        for n, job in enumerate(jobs):
            identity, argtypes = job
            result = results[job] = {"name": kernel_name(*identity), "family": _family(*identity),
                                     "factory_args": identity[2][2] if identity[2] else (),
                                     "signature": short_signature(argtypes), "error": None, "float64": False,
                                     "bound": None, "cc": {}, "loop": None}
            try:
                kernel = resolve_kernel(*identity)
                result["bound"] = launch_bounds(kernel)
                ptx = compile_ptx(kernel, argtypes, ptx_cc)
            except Exception as exc:  # report every kernel, not only the first failure
                result["error"] = error_summary(exc)
                continue
            result["float64"] = has_float64_arithmetic(ptx, argtypes)
            for cc in ccs:
                cubin = os.path.join(tmp, f"{n}.cubin") if cc == SASS_CC and tool("nvdisasm") else None
                pending.append((result, cc, cubin, argtypes, pool.submit(ptxas, ptx, cc, cubin)))
        for result, cc, cubin, argtypes, future in pending:
            try:
                result["cc"][cc] = dataclasses.asdict(future.result())
                if cubin:
                    result["loop"] = _loop_report(result, disassemble(cubin), argtypes)
            except Exception as exc:
                result["error"] = error_summary(exc)
    return results


def error_summary(exc):
    """One line for a compile error: its first line, the failing signature and the source line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    parts = lines[:1] + [line for line in lines if line.startswith(">>>")][:1]
    places = re.findall(r'File "([^"]+)", line (\d+)', str(exc))
    if places:
        path, line = places[-1]
        parts.append(f"at {os.path.basename(path)}:{line}")
    return f"{type(exc).__name__}: {' '.join(parts)}"


def _loop_report(result, sass, argtypes):
    """The hot loop's figures for the table: instructions, per element, loads, widest load."""
    from numba.core import types
    loop = hot_loop(sass)
    if loop is None:
        return None
    arrays = [t for t in argtypes if isinstance(t, types.Array)]
    itemsize = max((t.dtype.bitwidth // 8 for t in arrays), default=4)
    table = ELEMENTS_PER_ITERATION.get(result["family"])
    try:
        elements = int(table(*result["factory_args"]) if callable(table) else table)
        estimated = False
    except Exception:  # not in the table, or its factory's arguments changed
        elements, estimated = elements_per_trip(loop, itemsize), True
    loads = loop.memory.get("LDG", [])
    return {"instructions": loop.instructions, "calls": loop.calls, "elements": elements, "estimated": estimated,
            "per_element": loop.instructions / elements,
            "loads_per_element": sum(max(1, w // itemsize) for w in loads) / elements,
            "widest_load": 8 * max(loads, default=0), "wide": any(w > itemsize for w in loads)}


def check(launches, results, ccs, occupancy):
    """Step 3: ``(rows, violations)``; a row per distinct (kernel, signature, cc, block, dynamic shared
    memory), with the cases that launch it. ``occupancy(threads, registers, shared, cc)``."""
    groups = collections.defaultdict(list)
    for launch in launches:
        key = (launch["kernel"], launch["argtypes"], launch["block"], launch["shared"])
        groups[key].append(launch)
    rows, violations, reported = [], [], set()
    for (identity, argtypes, block, dynamic), group in groups.items():
        result = results[(identity, argtypes)]
        cases = list(dict.fromkeys(launch["case"] for launch in group))
        label = f"{result['name']}({result['signature']})"
        where = f"{label}, block {'x'.join(map(str, block))} [{cases[0]}{f' +{len(cases) - 1}' if cases[1:] else ''}]"
        if result["error"]:
            if label not in reported:
                violations.append(f"{label}: does not compile: {result['error']}")
            reported.add(label)
            continue
        if result["float64"] and label not in reported:
            violations.append(f"{label}: float64 arithmetic in a float32/float16 kernel")
        reported.add(label)
        threads = math.prod(block)
        bound = (result["bound"] or (None,))[0]
        grid = tuple(max(launch["grid"][i] for launch in group) for i in range(3))   # the largest
        if bound and threads > bound:
            violations.append(f"{where}: {threads} threads, over the kernel's launch bound {bound}")
        if threads > 1024 or grid[1] > 65535 or grid[2] > 65535:
            violations.append(f"{where}: grid {grid} x block {block} exceeds CUDA's limits")
        for cc in ccs:
            res = result["cc"].get(cc)
            if res is None:
                continue
            sm = f"sm_{cc[0]}{cc[1]}"
            shared = res["shared"] + dynamic
            occ = occupancy(threads, res["registers"], shared, cc)
            bandwidth_bound = result["family"] not in NOT_BANDWIDTH_BOUND
            row = {"kernel": result["name"], "signature": result["signature"], "cc": cc, "block": block,
                   "threads": threads, "registers": res["registers"], "spill_stores": res["spill_stores"],
                   "spill_loads": res["spill_loads"], "stack": res["stack"], "shared_static": res["shared"],
                   "shared_dynamic": dynamic, "occupancy": occ, "bandwidth_bound": bandwidth_bound,
                   "loop": result["loop"] if cc == SASS_CC else None, "cases": cases, "violations": []}
            if _registers_of_block(threads, res["registers"]) > REGISTERS_PER_BLOCK:
                row["violations"].append(f"registers: {threads} threads x {res['registers']} > {REGISTERS_PER_BLOCK}")
            if shared > SHARED_PER_BLOCK:
                row["violations"].append(f"shared memory: {res['shared']} static + {dynamic} dynamic bytes "
                                         f"> {SHARED_PER_BLOCK}")
            if (res["spill_stores"] or res["spill_loads"]) and (label, cc) not in reported:
                row["violations"].append(f"spills {res['spill_stores']} bytes stores, {res['spill_loads']} loads")
                reported.add((label, cc))
            if cc == OCCUPANCY_CC and bandwidth_bound and 0 < occ < MIN_OCCUPANCY:
                row["violations"].append(f"occupancy {occ:.0%} < {MIN_OCCUPANCY:.0%} (bandwidth-bound)")
            violations += [f"{where} on {sm}: {v}" for v in row["violations"]]
            rows.append(row)
    rows.sort(key=lambda r: (r["kernel"], r["signature"], r["threads"], r["shared_dynamic"], r["cc"]))
    return rows, violations


def compile_and_check(launches, ccs, workers=None):
    """Step 2 and 3, in a process without the simulator: ``(rows, violations, kernel signatures compiled)``."""
    jobs = list(dict.fromkeys((launch["kernel"], launch["argtypes"]) for launch in launches))
    results = compile_all(jobs, ccs, workers)
    from numbanorm.cuda._launch import occupancy
    rows, violations = check(launches, results, ccs, occupancy)
    return rows, violations, len(jobs)


# ----------------------------------------------------------------------------- running the steps

@dataclasses.dataclass
class Report:
    """What :func:`run` found."""
    rows: list             # dicts, see :func:`check`
    violations: list       # one line each
    ccs: tuple
    launches: dict         # case label -> kernel launches recorded
    compiled: int          # distinct (kernel, signature) compiled
    seconds: dict          # per step
    notes: list = dataclasses.field(default_factory=list)
    reads: dict = dataclasses.field(default_factory=dict)   # READ_CASES label -> count_reads' counts


def _start(args, simulator):
    """Start the step ``args`` (see :func:`_main`) in an interpreter of its own."""
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(step, timeout):
    """Wait for a step :func:`_start` started; raise if it failed."""
    try:
        stdout, stderr = step.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        step.kill()
        raise
    if step.returncode != 0:
        raise RuntimeError(f"{' '.join(step.args[2:3])} step failed:\n{stdout[-3000:]}{stderr[-5000:]}")


def _step(args, simulator, timeout):
    _finish(_start(args, simulator), timeout)


def run(ccs=CCS, ops=None, workers=None, timeout=1800, read_cases=READ_CASES):
    """Run the static check: dry run, compile, check; and count global reads (beside the compile).

    Parameters
    ----------
    ccs : sequence of (int, int)
        Compute capabilities to assemble for; the SASS and occupancy checks are
        made for sm_90 only, when it is among them.
    ops : sequence of str, optional
        Only the cases of these ops (default all of :data:`CASES`).
    workers : int, optional
        ptxas processes at once (default the CPU count).
    timeout : float
        Seconds each step may take.
    read_cases : sequence of Case
        Row shapes whose global reads per element are counted and checked (:func:`count_reads`):
        those of ``ops`` among them (default READ_CASES: about 3 minutes on one core).

    Returns
    -------
    Report
    """
    ccs = tuple(sorted(set(tuple(cc) for cc in ccs)))
    cases = [c for c in CASES if ops is None or c.op in ops]
    if not cases:
        raise ValueError(f"no cases for ops {ops}; the ops are {sorted({c.op for c in CASES})}")
    if tool("ptxas") is None:
        raise RuntimeError("ptxas not found: pip install 'numbanorm[cuda]' (nvidia-cuda-nvcc-cu12)")
    read_cases = [c for c in read_cases if ops is None or c.op in ops]
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases_file, launches_file, out, read_file, reads_file = (
            os.path.join(tmp, n) for n in ("cases.pkl", "launches.pkl", "out.pkl", "read.pkl", "reads.pkl"))
        for cases_of, path in ((cases, cases_file), (read_cases, read_file)):
            with open(path, "wb") as f:
                pickle.dump([dataclasses.astuple(c) for c in cases_of], f)
        start = time.perf_counter()
        counting = _start(["count-reads", read_file, reads_file], True)
        try:
            _step(["dry-run", cases_file, launches_file], True, timeout)
            seconds["dry run"] = time.perf_counter() - start
            _step(["compile", launches_file, out, "--cc", ",".join(f"{a}.{b}" for a, b in ccs),
                   "--workers", str(workers or 0)], False, timeout)
            seconds["compile and check"] = time.perf_counter() - start - seconds["dry run"]
            _finish(counting, timeout)
            seconds["reads counted (alongside)"] = time.perf_counter() - start
        finally:
            counting.kill()
        with open(out, "rb") as f:
            rows, violations, errors, launches, compiled = pickle.load(f)
        with open(reads_file, "rb") as f:
            reads = pickle.load(f)
        violations += check_reads(read_cases, reads)
    launches = {case.label: launches.get(case.label, 0) for case in cases}
    notes = []
    if SASS_CC in ccs and tool("nvdisasm") is None:
        notes.append("hot loops not read: nvdisasm not found (pip install nvidia-cuda-nvdisasm)")
    return Report(rows, errors + violations, ccs, launches, compiled, seconds, notes,
                  {c.label: dict(reads[c.label], length=row_length(c)) for c in read_cases})


def format_report(report):
    """The report as text: a table, a row per (kernel, signature, cc, launch), then the violations."""
    header = ("kernel", "signature", "cc", "block", "regs", "spill st/ld", "stack", "smem s+d", "occ",
              "loop", "el/it", "SASS/el", "LDG/el", "wide", "cases")
    lines = []
    for r in report.rows:
        loop = r["loop"]
        if loop:
            calls = f"+{loop['calls']}call" if loop["calls"] else ""
            sass = (f"{loop['instructions']}{calls}", f"{'~' if loop['estimated'] else ''}{loop['elements']}",
                    f"{loop['per_element']:.1f}", f"{loop['loads_per_element']:.1f}",
                    f"yes {loop['widest_load']}" if loop["wide"] else "no")
        else:
            sass = ("-",) * 5 if r["cc"] != SASS_CC else ("none", "-", "-", "-", "-")
        occ = f"{r['occupancy']:.0%}" + ("" if r["bandwidth_bound"] else "*")
        lines.append((r["kernel"], r["signature"], f"{r['cc'][0]}.{r['cc'][1]}", "x".join(map(str, r["block"])),
                      str(r["registers"]), f"{r['spill_stores']}/{r['spill_loads']}", str(r["stack"]),
                      f"{r['shared_static']}+{r['shared_dynamic']}", occ, *sass,
                      r["cases"][0] + (f" +{len(r['cases']) - 1}" if len(r["cases"]) > 1 else "")
                      + (" !" if r["violations"] else "")))
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    text = [" ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *lines]]
    text.append("")
    text.append(f"{sum(report.launches.values())} launches of {len(report.launches)} cases, "
                f"{report.compiled} kernel signatures compiled "
                f"for {', '.join(f'sm_{a}{b}' for a, b in report.ccs)} in "
                + ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items()) + ".")
    text.append("occ: theoretical occupancy on that cc (* not bandwidth-bound: not checked); loop: SASS "
                f"instructions of the largest innermost loop on sm_{SASS_CC[0]}{SASS_CC[1]}; el/it: elements a "
                "trip handles (~ estimated); LDG/el: global loads per element there; wide: loads wider "
                "than an element; ! marks a row with violations.")
    if report.reads:
        text.append("")
        text.append("Global reads per element of x (and dy), counted in the simulator with a GPU's launch "
                    f"choices; read once: 1 (forward: at most {ONCE['forward']:.3f}, each warp reads a row's first value),")
        text.append(f"the target for rows of up to {READ_ONCE['forward']} float32 values in the forward and "
                    f"{READ_ONCE['backward']} in the backward:")
        table = [("case", "row length", "forward x", "backward x", "backward dy")]
        for label, got in report.reads.items():
            table.append((label, str(got["length"]), f"{got['forward']:.2f}",
                          *(f"{n:.2f}" for n in got["backward"])))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        text += [" ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
        text.append("")
    text += report.notes
    text.append(f"{len(report.violations)} violations" + (":" if report.violations else "."))
    text += ["  " + v for v in report.violations]
    return "\n".join(text)


def _main(argv):
    """The steps, run as ``python _static.py dry-run CASES OUT``, ``python _static.py count-reads
    CASES OUT`` (both with NUMBA_ENABLE_CUDASIM=1) or ``python _static.py compile LAUNCHES OUT --cc
    7.0,8.0,9.0``."""
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("dry-run", "count-reads", "compile"))
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--cc", default=",".join(f"{a}.{b}" for a, b in CCS))
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)
    with open(args.input, "rb") as f:
        data = pickle.load(f)
    if args.step == "dry-run":
        launches, errors = dry_run([Case(*c) for c in data])
        out = (launches, errors)
    elif args.step == "count-reads":
        out = count_reads([Case(*c) for c in data])
    else:
        launches, errors = data
        ccs = tuple(tuple(int(p) for p in cc.split(".")) for cc in args.cc.split(","))
        rows, violations, compiled = compile_and_check(launches, ccs, args.workers or None)
        out = (rows, violations, errors, collections.Counter(launch["case"] for launch in launches), compiled)
    with open(args.output, "wb") as f:
        pickle.dump(out, f)
    return 0


if __name__ == "__main__":
    # Run as a script: this folder's modules are not top-level ones, and numbanorm is the one this file is in.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(_main(sys.argv[1:]))

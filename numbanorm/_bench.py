"""Benchmark cases and measurements shared by ``python -m numbanorm bench`` and the asv suite.

One table of cases (:data:`CASES`), one model of the bytes an op must move
(:data:`MODEL_TRAFFIC`), one copy-bandwidth reference (:func:`copy_bandwidth`)
and one timer (:func:`best_time`) serve both the command and ``benchmarks/``.

This file uses only numbanorm's public API, NumPy and (lazily) Numba, and no
relative imports: the asv suite loads it by path from the working tree, so the
same cases run against whatever older commit asv has installed.

Bandwidth model: a forward reads ``x`` and writes ``y`` (2 x size bytes), a
backward reads ``x`` and ``dy`` and writes ``dx`` (3 x size bytes); statistics
and parameters are negligible. The reference is a Numba ``prange`` copy of the
same number of bytes, measured in the same process in turn with the op
(:func:`against_copy`), which moves 2 x size bytes. ``fraction of copy`` is achieved GB/s over copy
GB/s: 1.0 means the op runs at the speed of memory.

On the cuda backend the same measurements run on the GPU's clock: the inputs
are device arrays made once, each sample is a run of back-to-back calls between
two CUDA events (the device synchronized before, the end event waited for
after; no host copies in between), and the copy reference is a device-to-device
copy. PyTorch's CUDA ops are timed the same way with ``torch.cuda.Event``
(:class:`CudaEvents`). The CUDA simulator's events keep no time: there the
samples fall back to wall time.
"""
from __future__ import annotations

import gc
import importlib.util
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

BACKENDS = ("numpy", "cpu", "cuda")
SIZES = ("small", "large")                       # the asv suite's shapes
COMMAND_SIZES = ("tiny", "train", "small", "step", "large")   # python -m numbanorm bench --size
DTYPES = ("float32", "float64")
DIRECTIONS = ("forward", "backward")

# Bytes a perfect kernel moves, in units of x.nbytes.
MODEL_TRAFFIC = {"forward": 2, "backward": 3}
# A copy reads and writes every byte once.
COPY_TRAFFIC = 2
# Seconds to wait after timing torch or numpy before timing ours again: their thread
# pools (torch's OpenMP, OpenBLAS) keep spinning for a while after a call.
SETTLE_SECONDS = 0.3

# Shapes: "small" is 2**18 elements (1 MiB in float32: stays in L2/L3), "large"
# is 2**25 elements (128 MiB in float32, 256 MiB in float64: at least 4x a 32 MiB
# last-level cache, so every pass streams from memory). The command also has
# "tiny" (a few hundred elements: the per-call cost, and quick enough for the CUDA
# simulator), "train", the shapes NumPy training code runs at (TRAIN: batches of 32 to
# 256 by 64 to 1024 features, small feature maps; several shapes a case), and "step",
# shapes of a real training step on a GPU: a ResNet-50 first-stage activation at batch
# 32 (32 x 64 x 56 x 56, 25.7 MB in float32) and 8 sequences of 1024 tokens of a
# width-4096 transformer (8192 x 4096, 128 MiB).
IMAGE = {"tiny": (2, 8, 4, 4), "small": (8, 32, 32, 32), "step": (32, 64, 56, 56),
         "large": (32, 256, 64, 64)}                            # logical (N, C, H, W)
ROWS = {"tiny": (8, 32), "small": (256, 1024), "step": (8192, 4096),
        "large": (32768, 1024)}                                 # (tokens, features)
TINY = (32, 64)                                                  # per-call overhead
TRAIN = {"rows": ((32, 64), (64, 256), (128, 512), (256, 1024)),   # (batch, features)
         "image": ((32, 16, 8, 8), (64, 32, 16, 16))}              # small feature maps
GROUPS = {"tiny": 2, "small": 8, "step": 32, "large": 32}
# Sizes out of cache, where one call is long and the comparisons need fewer samples.
STREAMING_SIZES = ("step", "large")
EPS = 1e-5


@dataclass(frozen=True)
class Case:
    """One op in one layout; shapes are logical ((N, C, H, W) or (rows, features))."""

    op: str
    layout: str                    # "rows" (normalize the last axis), "NCHW" or "NHWC"
    shapes: dict = field(hash=False, compare=False)

    @property
    def name(self):
        return self.op if self.layout == "rows" else f"{self.op}/{self.layout}"

    def logical_shape(self, size):
        return tuple(self.shapes[size]) if size in self.shapes else _parse_label(size)

    def shape(self, size):
        """The shape of the array in memory (NHWC puts the channels last)."""
        s = self.logical_shape(size)
        return (s[0], *s[2:], s[1]) if self.layout == "NHWC" else s

    def label(self, size):
        """``"32x256x64x64"``: the logical shape, used as the asv parameter."""
        return "x".join(map(str, self.logical_shape(size)))

    def sizes(self, size):
        """The sizes ``size`` stands for in this case: itself, or the shapes of "train"
        (batch norm in the NCHW layout also takes the (batch, features) shapes)."""
        if size != "train":
            return [size]
        shapes = TRAIN["rows"] if self.layout == "rows" else TRAIN["image"]
        if self.op == "batch_norm" and self.layout == "NCHW":
            shapes = TRAIN["rows"] + shapes
        return ["x".join(map(str, s)) for s in shapes]

    def size_of(self, label):
        """The size name ("small", "large") whose label is ``label``, else ``label`` itself."""
        for size in self.shapes:
            if self.label(size) == label:
                return size
        return label

    @property
    def axis(self):
        return -1 if self.layout in ("NHWC", "rows") else 1


def _parse_label(label):
    try:
        return tuple(int(n) for n in str(label).split("x"))
    except ValueError:
        raise ValueError(f"unknown size {label!r}: use one of {', '.join(COMMAND_SIZES)} "
                         "or a shape like 32x64") from None


CASES = (
    Case("batch_norm", "NCHW", IMAGE),
    Case("batch_norm", "NHWC", IMAGE),
    Case("layer_norm", "rows", ROWS),
    Case("rms_norm", "rows", ROWS),
    Case("group_norm", "NCHW", IMAGE),
    Case("group_norm", "NHWC", IMAGE),
    Case("instance_norm", "NCHW", IMAGE),
    Case("instance_norm", "NHWC", IMAGE),
    Case("batch_renorm", "NCHW", IMAGE),
    Case("local_response_norm", "NCHW", IMAGE),
    Case("weight_norm", "rows", ROWS),   # v of (out, in) features, one magnitude per row
    Case("spectral_norm", "rows", ROWS),  # w of (out, in) features, u of out entries
)
OPS = tuple(dict.fromkeys(c.op for c in CASES))


def cases(ops=None):
    """The cases whose op (or ``op/layout`` name) is in ``ops`` (all when None)."""
    if not ops:
        return list(CASES)
    unknown = [o for o in ops if not any(o in (c.op, c.name) for c in CASES)]
    if unknown:
        raise ValueError(f"unknown op {', '.join(unknown)}: choose from {', '.join(c.name for c in CASES)}")
    return [c for c in CASES if c.op in ops or c.name in ops]


def find_case(op, layout="rows"):
    for c in CASES:
        if c.op == op and c.layout == layout:
            return c
    raise ValueError(f"no case {op} {layout}")


def model_bytes(nbytes, direction):
    """Bytes a forward or backward over an input of ``nbytes`` bytes must move."""
    return MODEL_TRAFFIC[direction] * nbytes


# ----------------------------------------------------------------------------- timing

def _sample(fn, number):
    """Wall seconds of ``number`` calls of ``fn`` (which synchronizes any device itself)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


class CudaEvents:
    """A clock for :class:`Timer`: seconds of ``number`` calls on the GPU's timeline.

    The device is synchronized, a start event recorded, the calls made back to
    back (each only queues its kernels: ``fn`` must not synchronize), an end
    event recorded and waited for. ``event()`` makes a timing event with
    ``record()``, ``synchronize()`` and ``elapsed_time(end)`` in milliseconds:
    ``numba.cuda.event`` and ``torch.cuda.Event(enable_timing=True)`` both do.
    The CUDA simulator's events keep no time (``elapsed_time`` is negative):
    there, and whenever the events measured nothing, the wall time of the same
    stretch counts (its kernels run as the calls are made).
    """

    def __init__(self, event, synchronize, name="CUDA events"):
        self.synchronize, self.name = synchronize, name
        self.start, self.end = event(), event()
        self.wall = False      # whether the last sample fell back to wall time

    def __call__(self, fn, number):
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self.synchronize()
            wall = time.perf_counter()
            self.start.record()
            for _ in range(number):
                fn()
            self.end.record()
            self.end.synchronize()
            wall = time.perf_counter() - wall
        finally:
            if gc_was_enabled:
                gc.enable()
        ms = self.start.elapsed_time(self.end)
        self.wall = not ms > 0
        return wall if self.wall else ms / 1e3


def numba_cuda_clock():
    """A :class:`CudaEvents` clock on numba-cuda's events (the current device, default stream)."""
    from numba import cuda
    return CudaEvents(cuda.event, cuda.synchronize, "numba.cuda events")


def clock_for(backend):
    """The clock samples of ``backend`` take: None (wall time) on the host, CUDA events for cuda."""
    return numba_cuda_clock() if backend == "cuda" else None


def cuda_simulated():
    """Whether Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1); imports numba only."""
    import numba
    return bool(numba.config.ENABLE_CUDASIM)


class Timer:
    """The best seconds per call of ``fn`` so far, one more sample at each :meth:`sample`.

    The first call calibrates: each sample then calls ``fn`` often enough to last
    ``min_time`` (so tiny calls are not lost in the timer's resolution) but no
    more, since on a machine shared with other processes a sample of many
    parallel calls almost surely holds one that waited a whole scheduler time
    slice for a core. The first call counts as a sample when it is that long.
    ``clock(fn, number)`` gives the seconds of ``number`` calls: wall time by
    default, for which ``fn`` must synchronize any device itself; a
    :class:`CudaEvents` clock times unsynchronized calls on the GPU.
    """

    def __init__(self, fn, min_time=2e-4, clock=None):
        self.fn = fn
        self.clock = clock or _sample
        first = self.clock(fn, 1)
        if first >= min_time:
            self.number, self.best, self.samples = 1, first, [first]
        else:
            self.number = min(10 ** 6, math.ceil(min_time / max(first, 1e-7)))
            self.best, self.samples = math.inf, []

    @property
    def count(self):
        return len(self.samples)

    @property
    def last(self):
        """Seconds per call in the latest sample."""
        return self.samples[-1]

    def sample(self):
        """Take one more sample; returns the best so far (the sample itself is :attr:`last`)."""
        self.samples.append(self.clock(self.fn, self.number) / self.number)
        self.best = min(self.best, self.last)
        return self.best


def best_time(fn, repeat=10, min_time=2e-4, budget=None, clock=None):
    """Seconds per call of ``fn``: the best of ``repeat`` samples (see :class:`Timer`).

    With a ``budget`` (seconds), sampling stops once it is spent (at least one sample).
    """
    timer = Timer(fn, min_time, clock)
    start = time.perf_counter()
    while timer.count < repeat:
        timer.sample()
        if budget is not None and time.perf_counter() - start > budget:
            break
    return timer.best


# Samples the bench command's comparisons with numpy and torch take at the small size.
SMALL_COMPARE_REPEAT = 100


def default_repeat(backend, size, repeat=10):
    """The NumPy reference on large inputs takes a second a call: time it once."""
    return 1 if backend == "numpy" and size in STREAMING_SIZES else repeat


# ----------------------------------------------------------------------------- bandwidth references

_copy_kernels = {}
_copy_timers = {}
COPY_REPEAT = 50


def _cpu_copy_kernel():
    if "cpu" not in _copy_kernels:
        import numba

        @numba.njit(parallel=True, nogil=True)   # no disk cache: two module names load this file
        def prange_copy(src, dst):
            for i in numba.prange(src.shape[0]):
                dst[i] = src[i]

        _copy_kernels["cpu"] = prange_copy
    return _copy_kernels["cpu"]


_cuda = None   # numba.cuda, bound on the first cuda measurement (never imported before)


def _device_copy(src, dst):
    """Grid-stride device copy; compiled by ``numba.cuda.jit`` on first use.

    It names the module through the global ``_cuda`` (not a closure) so the CUDA
    simulator can swap in its fake module.
    """
    start = _cuda.grid(1)
    stride = _cuda.gridsize(1)
    for i in range(start, src.shape[0], stride):
        dst[i] = src[i]


def _cuda_copy_kernel():
    global _cuda
    if "cuda" not in _copy_kernels:
        from numba import cuda
        _cuda = cuda
        _copy_kernels["cuda"] = cuda.jit(_device_copy)
    return _copy_kernels["cuda"]


def _copy_functions(n, where):
    """Callables copying ``n`` float32 values (compiled, memory touched)."""
    if where == "cpu":
        _import_numbanorm_cpu()   # let numbanorm pick the threading layer first
        kernel = _cpu_copy_kernel()
        src, dst = np.ones(n, np.float32), np.zeros(n, np.float32)
        kernel(src, dst)

        def prange_copy():
            kernel(src, dst)
        return [prange_copy]

    # On the device the copies only queue their work: the CUDA-event clock synchronizes.
    from numba import cuda
    kernel = _cuda_copy_kernel()
    src = cuda.to_device(np.ones(n, np.float32))
    dst = cuda.device_array_like(src)
    # The simulator runs each thread as a Python thread: a few small blocks there.
    threads = 16 if cuda_simulated() else 256
    sms = getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 1)   # 1 in the simulator
    blocks = max(1, min(-(-n // threads), 4 if cuda_simulated() else 32 * sms))

    def by_kernel():
        kernel[blocks, threads](src, dst)

    def by_memcpy():
        dst.copy_to_device(src)

    by_kernel(), by_memcpy()
    cuda.synchronize()
    return [by_kernel, by_memcpy]


def copy_timers(nbytes, backend="cpu"):
    """The timers of the copy reference for ``nbytes`` bytes, one set per process and size.

    ``"cpu"`` and ``"numpy"``: a Numba ``prange`` copy on the host, wall time.
    ``"cuda"``: a device-to-device copy, by a grid-stride kernel and by
    ``copy_to_device`` (cuMemcpyDtoD; the faster counts), timed with CUDA events.
    """
    where = "cuda" if backend == "cuda" else "cpu"
    key = (where, int(nbytes))
    if key not in _copy_timers:
        _copy_timers[key] = [Timer(fn, clock=clock_for(where))
                             for fn in _copy_functions(max(1, int(nbytes) // 4), where)]
    return _copy_timers[key]


def copy_seconds(nbytes, backend="cpu", repeat=COPY_REPEAT):
    """Best seconds of a copy of ``nbytes`` bytes in this process: at least ``repeat`` samples."""
    timers = copy_timers(nbytes, backend)
    for timer in timers:
        while timer.count < repeat:
            timer.sample()
    return min(timer.best for timer in timers)


def interleaved(fns, repeat=10, clock=None):
    """Best seconds per call of each of ``fns``, sampled in turn so all see the same load."""
    timers = [Timer(fn, clock=clock) for fn in fns]
    while any(timer.count < repeat for timer in timers):
        for timer in timers:
            if timer.count < repeat:
                timer.sample()
    return [timer.best for timer in timers]


def against_copy(fn, nbytes, backend="cpu", repeat=10):
    """``(best seconds per call of fn, median copy-time ratio)`` against a copy of ``nbytes`` bytes.

    Rounds alternate a sample of the copy and one of ``fn``; each sample of ``fn``
    is paired with the mean of the copy samples just before and after it, and the
    ratio copy seconds / ``fn`` seconds is kept per round. On a shared machine the
    memory bandwidth drifts by tens of percent within seconds (other tenants), so a
    best ``fn`` time over a best copy time taken at other moments measures the
    drift as much as the op; the median of paired ratios does not. On cuda ``fn``
    must not synchronize: both are timed with CUDA events (see :class:`CudaEvents`).
    """
    copies = copy_timers(nbytes, backend)
    timer = Timer(fn, clock=clock_for(backend))

    def copy_sample():
        for copy in copies:
            copy.sample()
        return min(copy.last for copy in copies)

    before, ratios = copy_sample(), []
    while timer.count < repeat or not ratios:
        timer.sample()
        after = copy_sample()
        ratios.append((before + after) / 2 / timer.last)
        before = after
    return timer.best, float(np.median(ratios))


def copy_bandwidth(nbytes, backend="cpu"):
    """Copy GB/s (read + write, 1e9 bytes) for ``nbytes`` bytes on ``backend``'s device: the best seen."""
    return COPY_TRAFFIC * nbytes / copy_seconds(nbytes, backend) / 1e9


def achieved_bandwidth(nbytes, direction, seconds):
    """Model GB/s of a forward or backward over ``nbytes`` bytes that took ``seconds``."""
    return model_bytes(nbytes, direction) / seconds / 1e9


def fraction_of_copy(direction, copy_ratio):
    """Achieved GB/s over copy GB/s, from copy seconds over op seconds (same bytes, same moment)."""
    return MODEL_TRAFFIC[direction] / COPY_TRAFFIC * copy_ratio


def _import_numbanorm_cpu():
    import numbanorm
    numbanorm.available_backends()


def threading_info():
    """``(threading layer, thread count)`` of Numba, after a parallel call."""
    import numba
    copy_seconds(1 << 20, "cpu", repeat=1)   # a parallel launch picks the layer
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "none"
    return layer, numba.get_num_threads()


def last_level_cache():
    """``(level, bytes)`` of the CPU's largest cache, from sysfs; None when unknown."""
    best = None
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = os.listdir(root)
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(root, entry, "level")) as f:
                level = int(f.read())
            with open(os.path.join(root, entry, "size")) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        size = int(text.rstrip("KMG")) * scale
        if best is None or level > best[0]:
            best = (level, size)
    return best


# ----------------------------------------------------------------------------- prepared ops

def check_backend(backend, allow_simulator=False):
    """Raise NotImplementedError (asv's "skipped") when ``backend`` cannot run here.

    ``allow_simulator``: accept cuda in the CUDA simulator (the bench command's
    check that its cuda path runs; its times mean nothing).
    """
    import numbanorm
    available = numbanorm.available_backends()
    if backend not in available:
        raise NotImplementedError(f"backend {backend!r} is not available here "
                                  f"(available: {', '.join(available)})")
    if backend == "cuda":
        if cuda_simulated():
            if allow_simulator:
                return
            raise NotImplementedError("backend 'cuda' runs in the CUDA simulator here "
                                      "(NUMBA_ENABLE_CUDASIM=1): nothing to time")
        from numba import cuda
        if not cuda.is_available():
            raise NotImplementedError("backend 'cuda' has no CUDA device here (no GPU or driver)")


def usable_backends():
    """The backends of :data:`BACKENDS` that :func:`check_backend` accepts."""
    usable = []
    for backend in BACKENDS:
        try:
            check_backend(backend)
        except NotImplementedError:
            continue
        usable.append(backend)
    return usable


def host_inputs(case, size, dtype, seed=0):
    """``(x, dy, args, kwargs)`` as NumPy arrays for ``case``; kwargs exclude ``backend``."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    logical = case.logical_shape(size)
    shape = case.shape(size)
    x = rng.standard_normal(shape, dtype=dtype)
    x *= 2.0
    x += 0.5
    dy = rng.standard_normal(shape, dtype=dtype)
    if case.layout == "rows":
        features = logical[-1]
    else:
        features = logical[1]

    def vector(low, high):
        return rng.uniform(low, high, features).astype(dtype)

    args, kwargs = (), {}
    if case.op == "batch_norm":
        kwargs = dict(weight=vector(0.5, 1.5), bias=vector(-0.5, 0.5), training=True,
                      running_mean=np.zeros(features, dtype), running_var=np.ones(features, dtype),
                      momentum=0.1, eps=EPS, axis=case.axis)
    elif case.op == "layer_norm":
        kwargs = dict(weight=vector(0.5, 1.5), bias=vector(-0.5, 0.5), axis=-1, eps=EPS)
    elif case.op == "rms_norm":
        kwargs = dict(weight=vector(0.5, 1.5), axis=-1)
    elif case.op == "group_norm":
        groups = GROUPS.get(size) or math.gcd(features, 8)
        args = (groups,)
        kwargs = dict(weight=vector(0.5, 1.5), bias=vector(-0.5, 0.5), axis=case.axis, eps=EPS)
    elif case.op == "instance_norm":
        kwargs = dict(weight=vector(0.5, 1.5), bias=vector(-0.5, 0.5), axis=case.axis, eps=EPS)
    elif case.op == "batch_renorm":
        kwargs = dict(weight=vector(0.5, 1.5), bias=vector(-0.5, 0.5), training=True,
                      running_mean=vector(-0.1, 0.1), running_var=vector(0.8, 1.2),
                      momentum=0.1, eps=EPS, rmax=1.5, dmax=0.5, axis=case.axis)
    elif case.op == "local_response_norm":
        args = (5,)
        kwargs = dict(axis=case.axis)
    elif case.op == "spectral_norm":
        args = (rng.standard_normal(logical[0]).astype(dtype),)
        kwargs = dict(axis=0)
    elif case.op == "weight_norm":
        args = (rng.uniform(0.5, 1.5, logical[0]).astype(dtype),)
        kwargs = dict(axis=0)
    else:
        raise ValueError(f"no inputs for {case.op}")
    return x, dy, args, kwargs


class Run:
    """``case`` ready to run on ``backend``: data built, ``forward()``/``backward()`` synchronized.

    Raises NotImplementedError when the backend is not available. Call
    :meth:`warm` once (compiles the kernels, touches the memory) before timing.
    On cuda the inputs are device arrays, made once; :meth:`timed` gives the
    unsynchronized call that :attr:`clock` (CUDA events) times.
    """

    def __init__(self, case, size, dtype, backend, seed=0, allow_simulator=False):
        check_backend(backend, allow_simulator)
        import numbanorm
        self.case, self.size, self.dtype, self.backend = case, size, np.dtype(dtype), backend
        self.host = host_inputs(case, size, dtype, seed)
        x, dy, args, kwargs = self.host
        self.nbytes = x.nbytes
        self.shape = x.shape
        if backend == "cuda":
            from numba import cuda
            move = cuda.to_device
            self.sync = cuda.synchronize
        else:
            def move(a):
                return a
            self.sync = _nothing
        self.x, self.dy = move(x), move(dy)
        self.args = args
        self.kwargs = {k: move(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        self._forward = getattr(numbanorm, case.op + "_forward")
        self._backward = getattr(numbanorm, case.op + "_backward")
        self.cache = None
        self.clock = clock_for(backend)

    def _forward_call(self):
        _, self.cache = self._forward(self.x, *self.args, backend=self.backend, **self.kwargs)

    def _backward_call(self):
        if self.cache is None:
            self.forward()
        self._backward(self.dy, self.cache)

    def forward(self):
        self._forward_call()
        self.sync()

    def backward(self):
        self._backward_call()
        self.sync()

    def warm(self):
        self.forward()
        self.backward()
        return self

    def run(self, direction):
        return self.forward() if direction == "forward" else self.backward()

    def timed(self, direction):
        """The call :attr:`clock` times: synchronized for wall time, not under CUDA events."""
        if self.clock is None:
            return self.forward if direction == "forward" else self.backward
        return self._forward_call if direction == "forward" else self._backward_call

    def time(self, direction, repeat=10, budget=None):
        """Best seconds of a forward or backward."""
        return best_time(self.timed(direction), repeat=default_repeat(self.backend, self.size, repeat),
                         budget=budget, clock=self.clock)

    def against_copy(self, direction, repeat=10):
        """``(best seconds, fraction of copy)`` of a forward or backward, sampled in turn with
        a copy of the same bytes (see :func:`against_copy`)."""
        seconds, ratio = against_copy(self.timed(direction), self.nbytes, self.backend,
                                      repeat=default_repeat(self.backend, self.size, repeat))
        return seconds, fraction_of_copy(direction, ratio)

    def fraction_of_copy(self, direction, repeat=10):
        """Achieved GB/s of a forward or backward over copy GB/s, measured together."""
        return self.against_copy(direction, repeat)[1]


def _nothing():
    pass


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchRun:
    """PyTorch's same op on the same data; ``backward()`` times only the backward.

    The timed forward runs under ``torch.no_grad()`` with its output dropped (what a
    user's call costs); ``backward()`` calls ``torch.autograd.grad`` on a graph built
    once, by :meth:`warm`, and reused (``retain_graph=True``). Raises
    NotImplementedError when torch (or, for cuda, a CUDA build) is missing.

    For cuda the tensors are made on the device once and the samples are timed with
    ``torch.cuda.Event`` (:class:`CudaEvents`).
    """

    def __init__(self, run):
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        import numba
        self.torch = torch
        case, (x, dy, args, kwargs) = run.case, run.host
        if run.backend == "cuda":
            if not torch.cuda.is_available():
                raise NotImplementedError(f"torch {torch.__version__} has no CUDA device here")
            device = "cuda"
            self.sync = torch.cuda.synchronize
            self.clock = CudaEvents(lambda: torch.cuda.Event(enable_timing=True), torch.cuda.synchronize,
                                    "torch.cuda events")
        else:
            device = "cpu"
            self.sync = _nothing
            self.clock = None
        torch.set_num_threads(numba.get_num_threads())

        def tensor(a, grad=False):
            t = torch.from_numpy(a)
            if a.ndim == 4 and case.layout == "NHWC":
                t = t.permute(0, 3, 1, 2)          # logical NCHW, channels_last in memory
            t = t.to(device)
            if a.ndim == 4 and case.layout == "NHWC":
                assert t.is_contiguous(memory_format=torch.channels_last)
            return t.detach().requires_grad_(grad)

        xt, self.dy = tensor(x, True), tensor(dy)
        p = {k: tensor(v, k in ("weight", "bias")) if isinstance(v, np.ndarray) else v
             for k, v in kwargs.items()}
        self.inputs = [xt] + [p[k] for k in ("weight", "bias") if k in p]
        if case.op == "batch_norm":
            def fn():
                return F.batch_norm(xt, p["running_mean"], p["running_var"], p["weight"], p["bias"],
                                    training=True, momentum=p["momentum"], eps=p["eps"])
        elif case.op == "layer_norm":
            def fn():
                return F.layer_norm(xt, xt.shape[-1:], p["weight"], p["bias"], eps=p["eps"])
        elif case.op == "rms_norm":
            if not hasattr(F, "rms_norm"):
                raise NotImplementedError(f"torch {torch.__version__} has no rms_norm")

            def fn():
                return F.rms_norm(xt, xt.shape[-1:], p["weight"])
        elif case.op == "group_norm":
            def fn():
                return F.group_norm(xt, args[0], p["weight"], p["bias"], eps=p["eps"])
        elif case.op == "instance_norm":
            def fn():
                return F.instance_norm(xt, weight=p["weight"], bias=p["bias"], use_input_stats=True,
                                       eps=p["eps"])
        elif case.op == "local_response_norm":
            def fn():
                return F.local_response_norm(xt, args[0])
        elif case.op == "weight_norm":
            gt = tensor(args[0].reshape(-1, 1), True)
            self.inputs.append(gt)

            def fn():
                return torch._weight_norm(xt, gt, 0)
        else:
            raise NotImplementedError(f"no torch equivalent of {case.op}")
        self.fn = fn
        self.backend, self.size = run.backend, run.size
        self.y = None

    def _forward_call(self):
        with self.torch.no_grad():
            self.fn()

    def _backward_call(self):
        if self.y is None:
            self.y = self.fn()     # the graph, built once (the timed forward keeps none)
        self.torch.autograd.grad(self.y, self.inputs, self.dy, retain_graph=True)

    def forward(self):
        self._forward_call()
        self.sync()

    def backward(self):
        self._backward_call()
        self.sync()

    def warm(self):
        self.forward()
        self.backward()
        return self

    def timed(self, direction):
        """The call :attr:`clock` times: synchronized for wall time, not under CUDA events."""
        if self.clock is None:
            return self.forward if direction == "forward" else self.backward
        return self._forward_call if direction == "forward" else self._backward_call

    def time(self, direction, repeat=10, budget=None):
        return best_time(self.timed(direction), repeat=repeat, budget=budget, clock=self.clock)


def _handwritten():
    """:mod:`numbanorm._handwritten`, loaded by path beside this file (as the asv suite loads this
    file: it times the hand-written NumPy of this working tree against any installed commit)."""
    name = "numbanorm_handwritten"
    if name not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_handwritten.py")
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


class HandRun:
    """The hand-written NumPy of the same op on the same data (:mod:`numbanorm._handwritten`):
    ``forward()`` keeps what ``backward()`` needs. NotImplementedError for the ops it lacks."""

    def __init__(self, run):
        Handwritten = _handwritten().Handwritten
        if run.backend == "cuda":
            raise NotImplementedError("hand-written NumPy runs on the host")
        x, dy, args, kwargs = run.host
        kwargs = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        self.impl, self.x, self.dy = Handwritten(run.case.op, x, args, kwargs), x, dy
        self.cache = None

    def forward(self):
        _, self.cache = self.impl.forward(self.x)

    def backward(self):
        self.impl.backward(self.dy, self.cache)

    def warm(self):
        self.forward()
        self.backward()
        return self

    def time(self, direction, repeat=10):
        return best_time(self.forward if direction == "forward" else self.backward, repeat=repeat)


def _warm_or_none(kind, run):
    """``kind(run)`` warmed, or None where it has no such op (NotImplementedError)."""
    try:
        return kind(run).warm()
    except NotImplementedError:
        return None


def settle(backend):
    """Pause after timing torch or numpy before timing ``backend`` again (host backends only:
    their thread pools spin for a while after a call; see SETTLE_SECONDS)."""
    if backend != "cuda":
        time.sleep(SETTLE_SECONDS)


def time_alone(run, direction, repeat=10):
    """Best seconds of ``run``'s forward or backward timed alone (no copies in between)."""
    return interleaved([run.timed(direction)], repeat, clock=run.clock)[0]


def time_over_torch(run, torch_run, direction, repeat=10, ours=None):
    """Our time over PyTorch's for the same op and data, best of ``repeat`` each, timed apart
    on their own clocks (``ours``: our best seconds, when already measured alone)."""
    if ours is None:
        settle(run.backend)
        ours = time_alone(run, direction, repeat)
    settle(run.backend)
    ratio = ours / torch_run.time(direction, repeat)
    settle(run.backend)
    return ratio


# ----------------------------------------------------------------------------- the command

class Progress:
    """A text progress bar on stderr: redrawn in place on a terminal, a line a step otherwise."""

    def __init__(self, total, stream=None, width=28):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()

    def show(self, label):
        filled = int(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        text = (f"[{bar}] {self.done:3d}/{self.total} {time.perf_counter() - self.start:6.1f}s  "
                f"{label}")
        if self.tty:
            self.stream.write("\r" + text[:119].ljust(119))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def step(self, label=""):
        self.done += 1
        self.show(label)

    def close(self):
        if self.tty:
            self.stream.write("\r" + " " * 119 + "\r")
            self.stream.flush()


def _size_argument(text):
    if text not in COMMAND_SIZES:
        _parse_label(text)  # raises a clear error for anything else
    return text


def add_arguments(parser):
    """The options of ``python -m numbanorm bench``."""
    parser.add_argument("--backend", default="cpu", choices=BACKENDS, help="backend to time (default cpu)")
    parser.add_argument("--size", default=["large"], nargs="+", type=_size_argument, metavar="SIZE",
                        help="small: 2**18 elements, in cache; large: 2**25 elements, "
                             "128 MiB in float32 (default); train: shapes of training steps "
                             "(32x64x56x56 images, 8192x4096 rows); tiny: a few hundred elements "
                             "(per-call cost; the CUDA simulator); or a logical shape such as 16384x1024 "
                             "(rows x features) or 32x64x56x56 (N x C x H x W) with --ops. "
                             "Several sizes: one table, in turn")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--ops", nargs="+", metavar="OP",
                        help="only these ops (e.g. layer_norm, or batch_norm/NHWC for one layout); "
                             "commas also separate")
    parser.add_argument("--repeat", type=int, default=10,
                        help="timing samples, the best is shown (default 10; 1 for numpy on large)")
    parser.add_argument("--no-numpy", action="store_true", help="skip the numpy reference (faster)")
    parser.add_argument("--no-torch", action="store_true", help="skip the comparison with PyTorch")
    return parser


def _fmt_time(seconds):
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def _mib(nbytes):
    if nbytes < 1 << 20:
        return f"{nbytes / (1 << 10):g} KiB"
    return f"{nbytes / (1 << 20):g} MiB"


def _gpu_description():
    """One line about the device the cuda backend times, or the simulator."""
    if cuda_simulated():
        return ("none: Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) runs the kernels as Python "
                "threads; wall times, meaningless as speed")
    from numba import cuda
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    sms = getattr(device, "MULTIPROCESSOR_COUNT", "?")
    cc = ".".join(map(str, device.compute_capability))
    return (f"{name} (compute capability {cc}, {sms} SMs); samples timed with CUDA events around "
            "back-to-back calls, the device synchronized before and after")


def _versions(backend, with_torch, no_torch):
    """The versions line of the header (torch: its CUDA build on cuda, or why there is no comparison)."""
    import numba
    if backend == "cuda":
        import importlib.metadata
        try:
            numba_cuda = f", numba-cuda {importlib.metadata.version('numba-cuda')}"
        except importlib.metadata.PackageNotFoundError:
            numba_cuda = ""
        text = f"numba {numba.__version__}{numba_cuda}; numpy {np.__version__}"
    else:
        layer, threads = threading_info()
        text = f"numba {numba.__version__}, threading layer {layer}, {threads} threads; numpy {np.__version__}"
    if with_torch:
        import torch
        if backend == "cuda":
            if torch.cuda.is_available():
                text += f"; torch {torch.__version__} (CUDA {torch.version.cuda}; forward under no_grad)"
            else:
                text += f"; torch {torch.__version__} without a CUDA device (no comparison)"
        else:
            text += f"; torch {torch.__version__} ({threads} threads)"
    elif not no_torch:
        text += "; torch not installed (no comparison)"
    return text


def run_command(args, out=None):
    """``python -m numbanorm bench``: time every op, print the table. Returns an exit code.

    ``args`` as :func:`add_arguments` parses them; ``args.size`` may also be one size name.
    """
    out = out or sys.stdout
    import numbanorm
    ops = [o for item in (args.ops or []) for o in item.split(",") if o]
    size_names = [args.size] if isinstance(args.size, str) else list(dict.fromkeys(args.size))
    try:
        selected = cases(ops)
        # The cuda path runs in the simulator too (tiny sizes: a check that it works).
        check_backend(args.backend, allow_simulator=True)
    except (ValueError, NotImplementedError) as exc:
        print(f"numbanorm bench: {exc}", file=sys.stderr)
        return 2
    simulated = args.backend == "cuda" and cuda_simulated()
    if simulated:
        print("numbanorm bench: the CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1): the cuda path runs, "
              "its times mean nothing (use --size tiny)", file=sys.stderr)
    with_numpy = not args.no_numpy and args.backend != "numpy"
    with_torch = not args.no_torch and torch_available()
    repeat = max(1, args.repeat)

    def compare_repeat_of(size):
        # In cache a call takes microseconds and one that waited for a core or found cold caches
        # is common: the comparisons take the best of more calls there.
        if size in STREAMING_SIZES or simulated:
            return repeat
        return max(repeat, SMALL_COMPARE_REPEAT)

    versions = _versions(args.backend, with_torch, args.no_torch)
    itemsize = np.dtype(args.dtype).itemsize
    sizes = sorted({int(np.prod(c.shape(label))) * itemsize for size in size_names for c in selected
                    for label in c.sizes(size)})
    for n in sizes:
        copy_seconds(n, args.backend, repeat=repeat if simulated else COPY_REPEAT)

    with_hand = args.backend != "cuda"
    jobs = [(size, label, case) for size in size_names for case in selected for label in case.sizes(size)]
    per_case = 1 + 2 * (1 + with_numpy) + with_numpy + with_torch
    progress = Progress(len(jobs) * per_case)
    measured = []
    try:
        for size, label, case in jobs:
            compare_repeat = compare_repeat_of(size)
            progress.show(f"{case.name}: building data, compiling")
            run = Run(case, label, args.dtype, args.backend, allow_simulator=True).warm()
            progress.step(f"{case.name}: ready")
            ref = tr = hand = None
            if with_numpy:
                ref = Run(case, label, args.dtype, "numpy").warm()
                progress.step(f"{case.name}: numpy reference warmed")
            if with_torch:
                tr = _warm_or_none(TorchRun, run)
                progress.step(f"{case.name}: torch warmed")
            if with_hand:
                hand = _warm_or_none(HandRun, run)
            for direction in DIRECTIONS:
                # Ours and the copy sampled in turn (the same load for both); torch and numpy
                # apart, each followed by a pause on the host: torch's OpenMP threads and numpy's
                # OpenBLAS threads spin after each call (OpenBLAS for about 0.1 s) and take the
                # cores from Numba's threads (measured: 2x the time of the op that follows).
                t_ours, frac = run.against_copy(direction, repeat)
                # The comparisons use ours timed alone, as torch and numpy are: between copies
                # ours starts each call with cold caches, a handicap at the small size theirs lack.
                alone = time_alone(run, direction, compare_repeat) if tr or ref or hand else None
                over_torch = over_hand = None
                if tr is not None:
                    over_torch = time_over_torch(run, tr, direction, compare_repeat, ours=alone)
                if hand is not None:
                    over_hand = alone / hand.time(direction, compare_repeat)
                    time.sleep(SETTLE_SECONDS)
                # The result in the progress line too: a run cut short (a timeout) leaves its log.
                progress.step(f"{case.name} {'x'.join(map(str, run.shape))} {direction}: "
                              f"{_fmt_time(t_ours)}, {frac:.2f} of copy"
                              + ("" if over_torch is None else f", {over_torch:.2f} of torch's time"))
                over_numpy = None
                if ref is not None:
                    over_numpy = ref.time(direction, compare_repeat) / alone
                    time.sleep(SETTLE_SECONDS)
                    progress.step(f"{case.name} {direction}: numpy")
                measured.append((case, run.shape, run.nbytes, direction, t_ours, frac, over_numpy,
                                 over_torch, over_hand))
            del run, ref, tr, hand
    finally:
        progress.close()

    llc = last_level_cache()
    once = (" (the numpy reference: 1)" if with_numpy and any(s in STREAMING_SIZES for s in size_names)
            else "")
    print(f"numbanorm {numbanorm.__version__} bench: backend {args.backend}, size {', '.join(size_names)}, "
          f"{args.dtype}, best of {repeat}{once}", file=out)
    print(versions, file=out)
    if args.backend == "cuda":
        print(f"GPU: {_gpu_description()}", file=out)
    where = ("device-to-device copy, the faster of a grid-stride kernel and cuMemcpyDtoD"
             if args.backend == "cuda" else "Numba prange copy")
    for n in sizes:
        cache_note = ""
        if llc and args.backend != "cuda":
            cache_note = (f", {n / llc[1]:.3g}x the {_mib(llc[1])} L{llc[0]} cache" if n >= llc[1]
                          else f", fits in the {_mib(llc[1])} L{llc[0]} cache")
        samples = [s for t in copy_timers(n, args.backend) for s in t.samples]
        median = COPY_TRAFFIC * n / float(np.median(samples)) / 1e9
        print(f"copy bandwidth: {copy_bandwidth(n, args.backend):.1f} GB/s best, {median:.1f} GB/s median "
              f"({where} of {_mib(n)}{cache_note}; {len(samples)} samples, taken between the op's)", file=out)
    print("GB/s counts 2 x size for a forward (read x, write y), 3 x size for a backward "
          "(read x, dy; write dx)", file=out)

    rows = []
    for case, shape, n, direction, t, frac, over_numpy, over_torch, over_hand in measured:
        rows.append((case.op, case.layout, "x".join(map(str, shape)), direction, t,
                     achieved_bandwidth(n, direction, t), frac, over_numpy, over_torch, over_hand))

    head = ("op", "layout", "shape", "direction", "time", "GB/s", "of copy", "vs numpy", "/ torch", "/ hand")
    table = [head]
    for op, layout, shape, direction, t, gbs, frac, speedup, over, over_hand in rows:
        table.append((op, layout, shape, direction, _fmt_time(t), f"{gbs:.1f}", f"{frac:.2f}",
                      "-" if speedup is None else f"{speedup:.1f}x",
                      "-" if over is None else f"{over:.2f}", "-" if over_hand is None else f"{over_hand:.2f}"))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    right = {4, 5, 6, 7, 8, 9}
    print(file=out)
    for k, r in enumerate(table):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        print("  ".join(cells).rstrip(), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)
    compared = sorted({compare_repeat_of(size) for size in size_names})
    compared = " or ".join(map(str, compared))
    clock = ""
    if args.backend == "cuda":
        clock = ("; cuda: every sample is a run of calls between two CUDA events (the device "
                 "synchronized first), PyTorch's too (torch.cuda.Event; its forward under no_grad, "
                 "its backward torch.autograd.grad on a graph built once)")
        if simulated:
            clock += "; in the simulator, wall time"
    print(f"\ntime, GB/s: best of {repeat} calls sampled in turn with a copy; of copy: the op's GB/s over "
          f"the copy's GB/s measured just before and after it, the median of {repeat} such pairs; "
          "vs numpy: speed-up over the numpy backend; / torch: time over PyTorch's functional op "
          "(its forward under no_grad, output dropped; its backward torch.autograd.grad of that op; below 1: "
          "faster); / hand: time over the hand-written NumPy of numbanorm/_handwritten.py; "
          f"both ratios of best times of {compared}, each side timed alone{clock}", file=out)
    return 0


def main(argv=None):
    import argparse
    parser = add_arguments(argparse.ArgumentParser(prog="numbanorm bench", description=__doc__.splitlines()[0]))
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

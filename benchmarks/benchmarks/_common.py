"""Shared setup of the asv suites: the cases, the bandwidth references, the base classes.

The case table, the model bytes, the copy-bandwidth reference and the timer
live in ``numbanorm/_bench.py`` (also behind ``python -m numbanorm bench``).
That file is loaded by path from this working tree, not imported from the
installed numbanorm, so ``asv run HASH1..HASH2`` runs the same cases against
commits that predate it; it calls numbanorm through its public API only.

Parameters: ``backend`` ("numpy", "cpu", "cuda"; one that is not in
``numbanorm.available_backends()`` raises NotImplementedError in ``setup``,
which asv records as skipped), ``shape`` (the logical shape: (N, C, H, W) or
(rows, features); a cache-resident one of 2**18 elements and one of 2**25
elements, 128 MiB in float32, at least 4x the last-level cache), ``dtype`` and,
where an op has two, ``layout`` ("NCHW", "NHWC": channels last in memory).

``NUMBANORM_BENCH_SMOKE=1`` keeps only the small shapes, float32, the compiled
backends that can run here and one op in the compile-time benchmark: a quick
check that every benchmark runs (see ``benchmarks/check.sh``).
"""
import gc
import hashlib
import importlib.util
import os
import pathlib
import subprocess
import sys
import tempfile


def _load_bench():
    name = "numbanorm_bench_cases"
    if name in sys.modules:
        return sys.modules[name]
    path = pathlib.Path(__file__).resolve().parents[2] / "numbanorm" / "_bench.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()

SMOKE = os.environ.get("NUMBANORM_BENCH_SMOKE", "").strip() not in ("", "0")
SIZES = ("small",) if SMOKE else bench.SIZES
DTYPES = ("float32",) if SMOKE else bench.DTYPES
# Each parameter costs a process: the smoke run keeps the compiled backends that can
# run here (the numpy reference goes through the same code; the tests check it).
BACKENDS = ([b for b in bench.usable_backends() if b != "numpy"] or ["numpy"]) if SMOKE else bench.BACKENDS
FRACTION_UNIT = "fraction of copy bandwidth"
TORCH_UNIT = "time over torch's"


def op_params(op):
    """``(params, param_names)`` of the classes benchmarking ``op``."""
    op_cases = [c for c in bench.CASES if c.op == op]
    params = [list(BACKENDS), [op_cases[0].label(s) for s in SIZES], list(DTYPES)]
    names = ["backend", "shape", "dtype"]
    if len(op_cases) > 1:
        params.append([c.layout for c in op_cases])
        names.append("layout")
    return params, names


_state = {}


def prepared(key, make):
    """``make()``, built once per process and key.

    asv re-runs ``setup`` before every timed call; building 128 MiB of data and
    compiling each time would cost far more than the call. One entry is kept:
    each benchmark process runs one parameter combination.
    """
    if key not in _state:
        _state.clear()
        gc.collect()
        _state[key] = make()
    return _state[key]


def find_case(op, layout=None):
    """The case of ``op`` in ``layout``; None: the op's only layout (no ``layout`` parameter)."""
    return bench.find_case(op, layout or next(c.layout for c in bench.CASES if c.op == op))


def make_run(op, shape, dtype, backend, layout=None):
    """The warmed :class:`Run` of ``op`` (data built, kernels compiled), cached per process."""
    case = find_case(op, layout)
    size = case.size_of(shape)
    return prepared(("run", case.name, size, dtype, backend),
                    lambda: bench.Run(case, size, dtype, backend).warm())


class _OpBenchmark:
    """Forward and backward time, forward peak memory and the fraction of copy bandwidth.

    ``peakmem_forward`` is the process's peak resident memory, which includes the
    input and gradient built in ``setup`` (asv measures the whole process).
    """

    op = None
    timeout = 300.0
    # The numpy reference on the large shapes takes about a second a call: at most
    # 5 samples or 10 s a round.
    repeat = (1, 5, 10.0)

    def setup(self, backend, shape, dtype, layout=None):
        self.run = make_run(self.op, shape, dtype, backend, layout)

    def time_forward(self, *params):
        self.run.forward()

    def time_backward(self, *params):
        self.run.backward()

    def peakmem_forward(self, *params):
        self.run.forward()

    def track_forward_fraction_of_copy(self, *params):
        """Model GB/s of the forward (2 x size) over copy GB/s: same process, bytes, moments."""
        return self.run.fraction_of_copy("forward")

    track_forward_fraction_of_copy.unit = FRACTION_UNIT

    def track_backward_fraction_of_copy(self, *params):
        """Model GB/s of the backward (3 x size) over copy GB/s: same process, bytes, moments."""
        return self.run.fraction_of_copy("backward")

    track_backward_fraction_of_copy.unit = FRACTION_UNIT


class _VsTorch:
    """Our time over PyTorch's for the same op, data, layout and thread count.

    Skipped when torch is not installed (asv's own environments do not have it:
    run with ``--python=same`` from an environment that has) and for the numpy
    reference backend. torch's backward is timed alone: ``torch.autograd.grad``
    on a graph built once, with ``retain_graph=True``. On cuda both sides are
    timed with CUDA events and torch's forward runs under ``torch.no_grad()``
    (``bench.TorchRun``); skipped when torch has no CUDA device.
    """

    op = None
    timeout = 300.0

    def setup(self, backend, shape, dtype, layout=None):
        if backend == "numpy":
            raise NotImplementedError("the numpy reference is not compared with torch")
        if not bench.torch_available():
            raise NotImplementedError("torch is not installed")
        case = find_case(self.op, layout)
        size = case.size_of(shape)

        def make():
            run = bench.Run(case, size, dtype, backend).warm()
            return run, bench.TorchRun(run).warm()

        self.run, self.torch = prepared(("torch", case.name, size, dtype, backend), make)

    def _ratio(self, direction):
        # Apart, as `python -m numbanorm bench` does: on the host torch's OpenMP threads spin
        # after its calls (its warm-up's too) and would take the cores from ours, so it pauses
        # between them; on cuda both sides are timed with CUDA events.
        return bench.time_over_torch(self.run, self.torch, direction)

    def track_forward_time_over_torch(self, *params):
        return self._ratio("forward")

    track_forward_time_over_torch.unit = TORCH_UNIT

    def track_backward_time_over_torch(self, *params):
        return self._ratio("backward")

    track_backward_time_over_torch.unit = TORCH_UNIT


# ----------------------------------------------------------------------------- JIT cost

# Inputs of the first call in a fresh interpreter (small shapes: the parallel kernels
# compile, as they do for real data).
FIRST_CALL = {
    "batch_norm": ("(8, 32, 32, 32)", "training=True"),
    "layer_norm": ("(256, 1024)", ""),
    "rms_norm": ("(256, 1024)", ""),
    "group_norm": ("(8, 32, 32, 32)", "8"),
    "instance_norm": ("(8, 32, 32, 32)", ""),
}


def first_call_code(op, cache_dir):
    """``(stmt, setup)`` for asv's ``timeraw_``: import numbanorm, then one forward and backward.

    ``cache_dir`` None: a fresh, empty ``NUMBA_CACHE_DIR`` (removed when the child
    exits), so every kernel compiles. Otherwise that directory, already filled.
    """
    shape, args = FIRST_CALL[op]
    setup = f"""
import atexit, os, shutil, tempfile
cache_dir = {cache_dir!r}
if cache_dir is None:
    cache_dir = tempfile.mkdtemp(prefix="numbanorm-cold-cache-")
    atexit.register(shutil.rmtree, cache_dir, True)
os.environ["NUMBA_CACHE_DIR"] = cache_dir
import numpy as np
x = np.random.default_rng(0).standard_normal({shape}).astype(np.float32)
"""
    call_args = ", ".join(a for a in (args, "backend='cpu'") if a)
    stmt = f"""
import numbanorm
y, cache = numbanorm.{op}_forward(x, {call_args})
numbanorm.{op}_backward(y, cache)
"""
    return stmt, setup


def warm_cache_dir(op):
    """A Numba cache directory holding ``op``'s kernels for the installed numbanorm.

    Filled once per process by running the first call in a child; kept between
    runs under the temporary directory (one per installation: numba itself drops
    entries whose sources changed).
    """
    def make():
        import numbanorm
        where = os.path.dirname(numbanorm.__file__) + sys.executable
        tag = hashlib.sha1(where.encode()).hexdigest()[:12]
        path = os.path.join(tempfile.gettempdir(), f"numbanorm-asv-warm-cache-{tag}")
        os.makedirs(path, exist_ok=True)
        stmt, setup = first_call_code(op, path)
        subprocess.run([sys.executable, "-c", setup + stmt], check=True)
        return path
    return prepared(("warm-cache", op), make)

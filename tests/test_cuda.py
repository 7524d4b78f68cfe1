"""The "cuda" backend with device arrays (on a GPU, or the CUDA simulator in CI).

Device arrays in give device arrays out, with no copy of the data to the host;
NumPy arrays with ``backend="cuda"`` give NumPy arrays; running statistics on
the device are updated in place; float16, channels-last, permuted axes and
non-contiguous device arrays; bad input is refused before any kernel runs,
with the CPU backend's message. Tests marked ``gpu`` need a real GPU (they are
skipped in the simulator): large shapes against the CPU backend, CuPy, torch.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

import numbanorm as nbn
from _helpers import GRAD_NAMES, assert_close, backward, copy_kwargs, forward, make_params, rng_for, tol_for

if "cuda" not in nbn.available_backends():
    pytest.skip("the cuda backend is not available (no GPU, NUMBA_ENABLE_CUDASIM unset)",
                allow_module_level=True)

from numba import cuda  # noqa: E402  (only once the backend is known to work)

from numbanorm.cuda import _launch  # noqa: E402

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parents[1]

Case = namedtuple("Case", "id op shape kw affine running")
CASES = [
    Case("ln-warp", "layer_norm", (3, 5, 7), dict(axis=-1), "wb", False),
    Case("ln-block", "layer_norm", (2, 3, 40), dict(axis=-1), "wb", False),   # long rows: a block each
    Case("ln-permuted", "layer_norm", (2, 3, 4, 5), dict(axis=(1, 3)), "wb", False),
    Case("rms", "rms_norm", (5, 9), dict(), "w", False),
    Case("gn", "group_norm", (2, 6, 5), dict(num_groups=3), "wb", False),
    Case("gn-last", "group_norm", (2, 5, 6), dict(num_groups=2, axis=-1), "wb", False),
    Case("in-running", "instance_norm", (3, 4, 6), dict(), "wb", True),
    Case("in-last-running", "instance_norm", (2, 5, 3), dict(axis=-1), "wb", True),
    Case("in-frozen", "instance_norm", (2, 3, 5), dict(use_input_stats=False), "wb", True),
    Case("bn-train", "batch_norm", (4, 3, 5), dict(training=True), "wb", True),
    Case("bn-train-last", "batch_norm", (6, 5, 3), dict(training=True, axis=-1), "wb", True),
    Case("bn-train-pieces", "batch_norm", (1, 2, 45), dict(training=True), "wb", True),  # few, long planes
    Case("bn-eval", "batch_norm", (3, 4, 2), dict(training=False), "w", True),
]


def is_device(a):
    return hasattr(a, "__cuda_ndarray__") and not isinstance(a, np.ndarray)


def to_device(kw):
    return {k: cuda.to_device(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}


def host(a):
    return None if a is None else a.copy_to_host()


def _inputs(c, dtype, key):
    rng = rng_for("cuda", key, c.id, np.dtype(dtype).name)
    x = (0.5 + 2.0 * rng.standard_normal(c.shape)).astype(dtype)
    dy = rng.standard_normal(c.shape).astype(dtype)
    return x, dy, make_params(rng, c.op, c.shape, c.kw, c.affine, c.running, dtype)


@pytest.fixture
def no_host_copies(monkeypatch):
    """Counts copies from the device to the host (``copy_to_host``, which ``np.asarray`` uses too)."""
    calls = []
    cls = type(cuda.to_device(np.zeros(1)))
    original = cls.copy_to_host

    def counting(self, *args, **kwargs):
        calls.append(self.shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "copy_to_host", counting)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_device_arrays_in_device_arrays_out(c, dtype, no_host_copies):
    x, dy, kw = _inputs(c, dtype, "device")
    kw_ref = copy_kwargs(kw)
    xd, dyd, kwd = cuda.to_device(x), cuda.to_device(dy), to_device(kw)

    y, cache = forward(c.op, xd, **kwd)  # the backend is inferred from the device array
    grads = backward(c.op, dyd, cache)
    assert no_host_copies == [], "data was copied to the host"
    assert cache.backend == "cuda"
    assert is_device(y) and y.dtype == dtype and tuple(y.shape) == c.shape
    assert is_device(cache.rstd) and (cache.mean is None or is_device(cache.mean))
    assert all(g is None or is_device(g) for g in grads)

    y_ref, cache_ref = forward(c.op, x, "numpy", **kw_ref)
    grads_ref = backward(c.op, dy, cache_ref)
    tol = tol_for(dtype)
    assert_close(host(y), y_ref, tol, "y")
    assert_close(host(cache.rstd), cache_ref.rstd, tol, "rstd")
    assert_close(host(cache.mean), cache_ref.mean, tol, "mean")
    for name in ("running_mean", "running_var"):
        if name in kw:
            assert_close(host(kwd[name]), kw_ref[name], tol, name)
    for name, g, g_ref in zip(GRAD_NAMES[c.op], grads, grads_ref):
        assert_close(host(g), g_ref, tol, name)


@pytest.mark.parametrize("c", [CASES[0], CASES[4], CASES[9]], ids=lambda c: c.id)
def test_numpy_input_with_backend_cuda_gives_numpy(c):
    x, dy, kw = _inputs(c, np.float32, "numpy-in")
    y, cache = forward(c.op, x, "cuda", **kw)
    grads = backward(c.op, dy, cache)
    assert cache.backend == "cuda"
    for a in (y, cache.mean, cache.rstd, *grads):
        assert isinstance(a, np.ndarray)
    assert y.dtype == np.float32 and y.shape == c.shape


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("c", [c for c in CASES if c.running and c.kw.get("use_input_stats", True)
                               and c.kw.get("training", True)], ids=lambda c: c.id)
def test_running_statistics_on_the_device_are_updated_in_place(c, momentum):
    x, _, kw = _inputs(c, np.float32, "running")
    kw["momentum"] = momentum
    kw_ref = copy_kwargs(kw)
    kw_ref["num_batches_tracked"] = np.zeros(1, np.int64)
    kwd = to_device(kw)
    kwd["num_batches_tracked"] = np.zeros(1, np.int64)  # the counter stays on the host
    running = kwd["running_mean"], kwd["running_var"]
    for _ in range(2):
        forward(c.op, cuda.to_device(x), **kwd)
        forward(c.op, x, "numpy", **kw_ref)
    assert (kwd["running_mean"], kwd["running_var"]) == running  # the same arrays, written in place
    assert kwd["num_batches_tracked"][0] == 2
    for name in ("running_mean", "running_var"):
        assert is_device(kwd[name])
        np.testing.assert_allclose(host(kwd[name]), kw_ref[name], rtol=2e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("c", [CASES[1], CASES[3], CASES[5], CASES[6], CASES[10]], ids=lambda c: c.id)
def test_float16_device_arrays(c):
    rng = rng_for("cuda-f16", c.id)
    x = rng.standard_normal(c.shape).astype(np.float16)
    dy = rng.standard_normal(c.shape).astype(np.float16)
    kw = make_params(rng, c.op, c.shape, c.kw, c.affine, c.running, np.float16, running_dtype=np.float32)
    kw_ref = copy_kwargs(kw)
    kwd = to_device(kw)
    y, cache = forward(c.op, cuda.to_device(x), **kwd)
    grads = backward(c.op, cuda.to_device(dy), cache)
    y_ref, cache_ref = forward(c.op, x, "numpy", **kw_ref)
    grads_ref = backward(c.op, dy, cache_ref)
    assert is_device(y) and y.dtype == np.float16
    assert cache.rstd.dtype == np.float32  # statistics in the compute dtype
    assert_close(host(y), y_ref, 5e-3, "y")
    for name, g, g_ref in zip(GRAD_NAMES[c.op], grads, grads_ref):
        assert is_device(g) and g.dtype == np.float16, name
        assert_close(host(g), g_ref, 1e-2, name)
    for name in ("running_mean", "running_var"):
        if name in kw:
            assert kwd[name].dtype == np.float32
            assert_close(host(kwd[name]), kw_ref[name], 1e-4, name)


@pytest.mark.parametrize("c", [CASES[2], CASES[5], CASES[7], CASES[10]], ids=lambda c: c.id)
def test_non_contiguous_device_arrays(c):
    """Strided device views (every other element of a larger array) in, the right numbers out."""
    x, dy, kw = _inputs(c, np.float32, "strided")

    def strided(a):
        base = np.full(a.shape[:-1] + (2 * a.shape[-1],), np.nan, a.dtype)
        base[..., ::2] = a
        view = cuda.to_device(base)[..., ::2]
        assert not view.is_c_contiguous()
        return view

    kwd = to_device(kw)
    for k in ("weight", "bias"):
        if k in kw:
            kwd[k] = strided(kw[k])
    y, cache = forward(c.op, strided(x), **kwd)
    grads = backward(c.op, strided(dy), cache)
    y_ref, cache_ref = forward(c.op, x, "numpy", **copy_kwargs(kw))
    grads_ref = backward(c.op, dy, cache_ref)
    assert_close(host(y), y_ref, 1e-4, "y")
    for name, g, g_ref in zip(GRAD_NAMES[c.op], grads, grads_ref):
        assert_close(host(g), g_ref, 1e-4, name)


def test_mixed_device_input_and_host_parameters():
    c = CASES[9]
    x, dy, kw = _inputs(c, np.float32, "mixed")
    y, cache = forward(c.op, cuda.to_device(x), **copy_kwargs(kw))  # host weight, bias, running stats
    grads = backward(c.op, cuda.to_device(dy), cache)
    y_ref, cache_ref = forward(c.op, x, "numpy", **kw)
    assert is_device(y) and all(is_device(g) for g in grads)
    assert_close(host(y), y_ref, 1e-4, "y")
    assert_close(host(grads[1]), backward(c.op, dy, cache_ref)[1], 1e-4, "dweight")


# ----------------------------------------------------------------------------- errors

BAD = [
    ("layer_norm", TypeError, "int32", lambda x, kw: (cuda.to_device((x * 3).astype(np.int32)), kw)),
    ("layer_norm", ValueError, "weight has shape", lambda x, kw: (x, dict(kw, weight=cuda.to_device(np.ones(4))))),
    ("batch_norm", ValueError, "eps must be", lambda x, kw: (x, dict(kw, eps=0.0))),
    ("batch_norm", ValueError, "running_var has shape",
     lambda x, kw: (x, dict(kw, running_var=cuda.to_device(np.ones(5))))),
    ("instance_norm", ValueError, "more than 1 spatial", lambda x, kw: (cuda.to_device(np.ones((3, 4, 1))), kw)),
    ("group_norm", ValueError, "divisible by num_groups", lambda x, kw: (x, dict(kw, num_groups=3))),
]


def _base(op):
    rng = rng_for("cuda-errors", op)
    kw = make_params(rng, op, (3, 4, 6), {"batch_norm": dict(training=True), "group_norm": dict(num_groups=2)}
                     .get(op, {}), "wb", op in ("batch_norm", "instance_norm"))
    return rng.standard_normal((3, 4, 6)), kw


@pytest.mark.parametrize("op, exc, match, edit", BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_bad_device_input_is_refused_before_any_kernel_runs(monkeypatch, op, exc, match, edit):
    x, kw = _base(op)
    xd, kwd = edit(cuda.to_device(x), to_device(kw))
    x_host = xd.copy_to_host() if is_device(xd) else xd
    kw_host = {k: host(v) if is_device(v) else v for k, v in kwd.items()}
    # The CPU backend refuses the same call with the same message.
    with pytest.raises(exc, match=match) as cpu_error:
        forward(op, x_host, "cpu", **kw_host)
    module = importlib.import_module(f"numbanorm.cuda.{op}")
    monkeypatch.setattr(module, "forward", lambda *a: pytest.fail("the cuda backend was called"))
    before = {k: host(v) for k, v in kwd.items() if is_device(v)}
    with pytest.raises(exc, match=match) as cuda_error:
        forward(op, xd, **kwd)
    assert str(cuda_error.value) == str(cpu_error.value)
    for k, v in before.items():  # running statistics and parameters untouched
        np.testing.assert_array_equal(host(kwd[k]), v, err_msg=k)


def test_bad_device_gradient_is_refused_before_any_kernel_runs(monkeypatch):
    x, kw = _base("layer_norm")
    _, cache = forward("layer_norm", cuda.to_device(x), **to_device(kw))
    monkeypatch.setattr("numbanorm.cuda.layer_norm.backward", lambda *a: pytest.fail("the cuda backend was called"))
    with pytest.raises(ValueError, match="dy has shape"):
        backward("layer_norm", cuda.to_device(np.ones((3, 4, 5))), cache)
    with pytest.raises(TypeError, match="int64"):
        backward("layer_norm", cuda.to_device(np.ones((3, 4, 6), np.int64)), cache)


# ----------------------------------------------------------------------------- imports, geometry

def test_importing_numbanorm_does_not_import_numba_cuda():
    code = ("import sys, numpy as np, numbanorm as nbn\n"
            "nbn.layer_norm_backward(np.ones((2, 3)), nbn.layer_norm_forward(np.ones((2, 3)))[1])\n"
            "assert 'numba.cuda' not in sys.modules, 'numba.cuda imported by the CPU path'\n"
            "assert 'cuda' in nbn.available_backends()\n"
            "assert 'numba.cuda' in sys.modules\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NUMBANORM_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_launch_geometry_covers_both_row_paths_and_several_blocks():
    """The shapes above take each path of the row kernels: a warp per row, a block per row,
    several blocks and grid-stride loops (more rows than the grid's threads)."""
    (blocks, (lanes, rows)) = _launch.row_config(15, 7)
    assert lanes == _launch.ROW_WARP and rows > 1 and blocks > 1
    (blocks, (lanes, rows)) = _launch.row_config(6, 40)
    assert lanes > _launch.ROW_WARP and rows == 1
    (blocks, (lanes, rows)) = _launch.row_config(1000, 7)
    assert blocks * rows < 1000


@pytest.mark.parametrize("op, shape, kw, kept", [
    ("layer_norm", (3, 5, 10), dict(axis=-1), ("all", "all")),        # warp per row
    ("layer_norm", (2, 3, 63), dict(axis=-1), ("all", "part")),       # block per row; x and dy do not both fit
    ("layer_norm", (2, 2, 200), dict(axis=-1), ("part", "part")),     # a prefix kept, the rest re-read
    ("group_norm", (3, 6, 5), dict(num_groups=3), ("all", "all")),    # segments of 5 over 4 lanes
    ("group_norm", (2, 12, 7, 3), dict(num_groups=4), ("all", "part")),
])
def test_rows_kept_in_shared_memory_or_not_give_the_reference(op, shape, kw, kept):
    """The long-row kernels keep as much of each row as fits in shared memory (all of it, or a
    prefix) for the later passes (the backward keeps x and dy, whose segments' lanes differ
    from the dx pass's) and re-read the rest. Each agrees with the numpy reference, float64."""
    from numbanorm.cuda.rowwise import cache_length
    rng = rng_for("row-cache", op, shape)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    channels = shape[-1] if op == "layer_norm" else shape[1]
    kw = dict(kw, weight=rng.standard_normal(channels), bias=rng.standard_normal(channels))
    L = shape[-1] if op == "layer_norm" else int(np.prod(shape[1:])) // kw["num_groups"]
    block = _launch.row_config(1, L)[1]
    lengths = [cache_length(block, L, arrays, np.dtype(np.float64)) for arrays in (1, 2)]
    assert tuple("all" if n == L else "part" if n > 0 else "none" for n in lengths) == kept
    y_ref, cache_ref = forward(op, x, "numpy", **kw)
    y, cache = forward(op, x, "cuda", **kw)
    assert_close(y, y_ref, tol_for(np.float64), "y")
    for name, got, want in zip(GRAD_NAMES[op], backward(op, dy, cache), backward(op, dy, cache_ref)):
        assert_close(got, want, tol_for(np.float64), name)


@pytest.mark.parametrize("op, shape, kw, forward_path, backward_path", [
    ("layer_norm", (7, 8), {}, "exact", "registers exact"),       # rows past the end in a block
    ("layer_norm", (3, 12), {}, "checked", "registers checked"),  # rows shorter than the lanes' slots
    ("layer_norm", (5, 32), {}, "exact", "dy shared exact"),
    ("rms_norm", (5, 32), {}, "exact", "dy shared exact"),
    ("layer_norm", (5, 24), {}, "checked", "dy shared checked"),
    ("layer_norm", (2, 40), {}, "long", "long"),
    ("instance_norm", (2, 5, 4, 8), {}, "exact", "dy shared exact"),
    ("instance_norm", (2, 5, 4, 6), {}, "checked", "dy shared checked"),
    ("group_norm", (3, 6, 5), dict(num_groups=3), "checked", "registers checked"),   # segments of 5
    ("group_norm", (2, 8, 4), dict(num_groups=2), "exact", "registers exact"),       # 4 segments of 4
    ("group_norm", (2, 6, 5), dict(num_groups=1), "checked", "dy shared checked"),   # 6 segments of 5
    ("group_norm", (2, 4, 3, 3), dict(num_groups=2), "checked", "dy shared checked"),  # segments of 9
    # 4 values a lane (16 bytes, more than the simulator's tables give): 2 in every row, 1 checked, 1 past every end
    ("layer_norm", (3, 40), dict(register_bytes=16), "checked", "registers checked"),
    ("group_norm", (3, 4, 10), dict(num_groups=1, register_bytes=16), "checked", "registers checked"),
])
def test_each_row_kernel_variant_gives_the_reference(request, monkeypatch, op, shape, kw, forward_path, backward_path):
    """The register row kernels are compiled for their lanes and for rows that fill them exactly
    (no bounds checks; rows past the end of the array compute on the last row and write
    nothing), or not;
    the backward keeps dy in registers or in shared memory, or takes the long-row kernel;
    with a weight per element, per row or per segment of a row (group norm: a lane
    reduction per segment). Each variant agrees with the numpy reference in float32."""
    from numbanorm.cuda import rowwise
    taken = []
    kw = dict(kw)
    if "register_bytes" in kw:
        size = kw.pop("register_bytes")
        monkeypatch.setattr(_launch, "ROW_REGISTER_BYTES", dict.fromkeys(_launch.ROW_REGISTER_BYTES, size))
        _launch.register_row_config.cache_clear()
        request.addfinalizer(_launch.register_row_config.cache_clear)

    def spy(factory, describe):
        def made(*args):
            taken.append(describe(*args))
            return factory(*args)
        monkeypatch.setattr(rowwise, factory.__name__, made)

    spy(rowwise._forward_kernel, lambda per, lanes, full, weights: "exact" if full == per else "checked")
    spy(rowwise._backward_kernel, lambda per, lanes, full, weights, dy_shared:
        ("dy shared " if dy_shared else "registers ") + ("exact" if full == per else "checked"))
    spy(rowwise._forward_long_kernel, lambda per_element: "long")
    spy(rowwise._backward_long_kernel, lambda per_element: "long")
    rng = rng_for("row-variants", op, shape)
    x = (3 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    channels = shape[-1] if op in ("layer_norm", "rms_norm") else shape[1]
    kw = dict(kw, weight=rng.standard_normal(channels).astype(np.float32))
    if op != "rms_norm":
        kw["bias"] = rng.standard_normal(channels).astype(np.float32)
    y_ref, cache_ref = forward(op, x, "numpy", **kw)
    y, cache = forward(op, x, "cuda", **kw)
    grads = backward(op, dy, cache)
    assert taken == [forward_path, backward_path]
    assert_close(y, y_ref, tol_for(np.float32), "y")
    for name, got, want in zip(GRAD_NAMES[op], grads, backward(op, dy, cache_ref)):
        assert_close(got, want, tol_for(np.float32), name)


# ----------------------------------------------------------------------------- real GPU only

Big = namedtuple("Big", "op shape kw affine running")
BIG = [
    Big("layer_norm", (4096, 4096), dict(axis=-1), "wb", False),
    Big("rms_norm", (512, 8192), dict(axis=-1), "w", False),
    Big("batch_norm", (32, 64, 56, 56), dict(training=True), "wb", True),
    Big("batch_norm", (32, 56, 56, 64), dict(training=True, axis=-1), "wb", True),
    Big("group_norm", (32, 64, 56, 56), dict(num_groups=32), "wb", False),
    Big("instance_norm", (32, 64, 56, 56), dict(), "wb", True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("b", BIG, ids=lambda b: f"{b.op}-{'x'.join(map(str, b.shape))}")
def test_gpu_large_shapes_agree_with_the_cpu_backend(b, dtype):
    rng = rng_for("gpu-big", b.op, b.shape)
    x = (3.0 + rng.standard_normal(b.shape, np.float32)).astype(dtype)
    dy = rng.standard_normal(b.shape, np.float32).astype(dtype)
    kw = make_params(rng, b.op, b.shape, b.kw, b.affine, b.running, dtype,
                     running_dtype=np.float32 if dtype == np.float16 else None)
    kw_cpu, kwd = copy_kwargs(kw), to_device(kw)
    y, cache = forward(b.op, cuda.to_device(x), **kwd)
    grads = backward(b.op, cuda.to_device(dy), cache)
    y_cpu, cache_cpu = forward(b.op, x, "cpu", **kw_cpu)
    grads_cpu = backward(b.op, dy, cache_cpu)
    tol = 5e-3 if dtype == np.float16 else 1e-4
    assert_close(host(y), y_cpu, tol, "y")
    assert_close(host(cache.rstd), cache_cpu.rstd, 1e-4, "rstd")
    for name, g, g_cpu in zip(GRAD_NAMES[b.op], grads, grads_cpu):
        assert_close(host(g), g_cpu, 1e-2 if dtype == np.float16 else 1e-3, name)
    for name in ("running_mean", "running_var"):
        if name in kw:
            assert_close(host(kwd[name]), kw_cpu[name], 1e-4, name)


@pytest.mark.gpu
def test_gpu_large_mean_float32_rows():
    x = (1e4 + rng_for("gpu-mean").standard_normal((64, 65536))).astype(np.float32)
    y = host(nbn.layer_norm(cuda.to_device(x), eps=1e-8))
    np.testing.assert_allclose(y.var(axis=1, dtype=np.float64), 1.0, atol=1e-3)
    np.testing.assert_allclose(y.mean(axis=1, dtype=np.float64), 0.0, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("library", ["cupy", "torch"])
def test_gpu_cupy_and_torch_arrays_come_back_as_their_kind(library):
    lib = pytest.importorskip(library)
    x = rng_for("kinds", library).standard_normal((8, 4, 16)).astype(np.float32)
    if library == "cupy":
        xd, kind = lib.asarray(x), lib.ndarray
    else:
        xd, kind = lib.as_tensor(x, device="cuda"), lib.Tensor
    rm, rv = (lib.zeros(4, dtype=lib.float32), lib.ones(4, dtype=lib.float32)) if library == "cupy" else (
        lib.zeros(4, device="cuda"), lib.ones(4, device="cuda"))
    y, cache = nbn.batch_norm_forward(xd, training=True, running_mean=rm, running_var=rv)
    dx, _, _ = nbn.batch_norm_backward(y, cache)
    assert isinstance(y, kind) and isinstance(dx, kind) and isinstance(cache.rstd, kind)
    y_ref, _ = nbn.batch_norm_forward(x, training=True, backend="numpy", running_mean=np.zeros(4, np.float32),
                                      running_var=np.ones(4, np.float32))
    to_numpy = (lambda a: a.get()) if library == "cupy" else (lambda a: a.cpu().numpy())
    assert_close(to_numpy(y), y_ref, 1e-4, "y")
    assert float(to_numpy(rm).std()) > 0  # updated in place through the view


def test_a_host_backend_refuses_device_arrays_clearly():
    x = cuda.to_device(np.ones((4, 6), np.float32))
    with pytest.raises(TypeError, match="takes NumPy arrays"):
        nbn.layer_norm(x, backend="cpu")

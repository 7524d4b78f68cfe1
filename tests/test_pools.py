"""The memory pools: reuse without aliasing, the NUMBANORM_POOL_BYTES cap, least recently used
classes released first, ``numbanorm.empty_cache()``, per-device caches on the GPU, and the host
parameters kept on the device. GPU tests run on a GPU or in the CUDA simulator."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

import numbanorm as nbn
from numbanorm import _pool
from numbanorm._pool import allocate_host, lend_host, Pool, size_class
from numbanorm.cpu import _kernel

HAS_CUDA = "cuda" in nbn.available_backends()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="the cuda backend is not available")
F32 = np.dtype(np.float32)


def _host_pool(**kw):
    return Pool(allocate_host, lend_host, **kw)


def _address(a):
    """The first byte's address of a host array, a device array or a simulator device array."""
    interface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
    return interface["data"][0]


# ----------------------------------------------------------------------------- the pool itself

def test_size_classes_round_up_by_at_most_an_eighth():
    assert size_class(0) == size_class(1) == 512
    for n in (513, 1000, 4097, 10**6, 3 * 2**20 + 5):
        assert n <= size_class(n) <= n * 1.125
        assert size_class(size_class(n)) == size_class(n)


def test_a_buffer_returns_only_once_every_view_is_gone():
    pool = _host_pool()
    a = pool.empty((16, 16), F32)
    kept = _address(a)
    view = a.T[1:]
    del a
    b = pool.empty((16, 16), F32)
    assert _address(b) != kept          # the view still uses it
    del view
    c = pool.empty((256,), F32)         # same size class
    assert _address(c) == kept
    assert pool.stats()["misses"] == 2 and pool.stats()["hits"] == 1


def test_the_cap_is_honoured_and_least_recently_used_classes_go_first():
    pool = _host_pool(cap_bytes=4096)
    small, large = pool.empty((512,), F32), pool.empty((1024,), F32)   # 2 KiB and 4 KiB classes
    del small, large                    # the small one comes back first: least recently used
    assert pool.stats()["kept_bytes"] == 4096
    pool.empty((1024,), F32)            # a hit: the large one was kept
    assert pool.stats()["misses"] == 2
    many = [pool.empty((256,), F32) for _ in range(10)]
    del many
    assert pool.stats()["kept_bytes"] <= 4096


def test_max_buffers_and_cap_zero_keep_nothing_more():
    pool = _host_pool(max_buffers=1)
    arrays = [pool.empty((1024,), F32) for _ in range(3)]
    del arrays
    assert pool.stats()["kept_bytes"] == 4096
    pool = _host_pool(cap_bytes=0)
    pool.empty((1024,), F32)
    assert pool.stats()["kept_bytes"] == 0


def test_the_cap_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("NUMBANORM_POOL_BYTES", "12345")
    assert _host_pool().cap_bytes == 12345
    monkeypatch.setenv("NUMBANORM_POOL_BYTES", "1e6")
    assert _pool.default_cap() == 10**6
    monkeypatch.delenv("NUMBANORM_POOL_BYTES")
    assert _pool.default_cap() == 1 << 30
    monkeypatch.setenv("NUMBANORM_POOL_BYTES", "lots")
    with pytest.raises(ValueError, match="NUMBANORM_POOL_BYTES"):
        _pool.default_cap()


def test_empty_cache_releases_the_cpu_pools():
    a, s = _kernel.outputs.empty((1 << 20,), F32), _kernel.scratch.zeros((1 << 15,), F32)
    del a, s
    assert _kernel.outputs.pool.stats()["kept_bytes"] > 0 and _kernel.scratch.pool.stats()["kept_bytes"] > 0
    nbn.empty_cache()
    assert _kernel.outputs.pool.stats()["kept_bytes"] == 0 and _kernel.scratch.pool.stats()["kept_bytes"] == 0


def test_empty_cache_never_imports_numba_cuda():
    code = "import sys, numbanorm; numbanorm.empty_cache(); assert 'numba.cuda' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_info_prints_the_pools():
    from numbanorm.__main__ import info
    out = io.StringIO()
    info(None, out)
    assert "memory pools: cpu outputs" in out.getvalue()


# ----------------------------------------------------------------------------- the GPU pool

@pytest.fixture
def gpu():
    from numba import cuda

    from numbanorm.cuda import _arrays
    return cuda, _arrays


@needs_cuda
def test_device_outputs_never_alias_a_live_buffer(gpu):
    cuda, _arrays = gpu
    a, b = _arrays.empty((64, 3), F32), _arrays.empty((64, 3), F32)
    assert _address(a) != _address(b)
    kept = _address(a)
    del a
    for make_view in (lambda d: _arrays.transposed(d.reshape(64, 3), (1, 0)), lambda d: d[1:]):
        c = _arrays.empty(192, F32)
        assert _address(c) == kept      # the buffer given back last
        view = make_view(c)
        del c
        d = _arrays.empty(192, F32)
        assert _address(d) != kept      # the view keeps it out of reach
        del d, view                     # the view last: its buffer is the next one handed out


@needs_cuda
def test_outputs_of_successive_device_calls_do_not_share_memory(gpu):
    cuda, _ = gpu
    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    y1 = nbn.layer_norm(cuda.to_device(x))
    expected = y1.copy_to_host()
    y2 = nbn.layer_norm(cuda.to_device(2 * x + 1))
    assert _address(y1) != _address(y2)
    del y2
    y3 = nbn.layer_norm(cuda.to_device(x))
    np.testing.assert_array_equal(y1.copy_to_host(), expected)
    np.testing.assert_array_equal(y3.copy_to_host(), expected)


@needs_cuda
def test_empty_cache_releases_the_gpu_pool_and_constants(gpu):
    cuda, _arrays = gpu
    ones = _arrays._constant(7, 1.0, F32)
    assert _arrays._constant(7, 1.0, F32) is ones
    a = _arrays.empty((100,), F32)
    del a
    assert _arrays.device_pool().stats()["kept_bytes"] > 0
    nbn.empty_cache()
    assert _arrays.device_pool().stats()["kept_bytes"] == 0
    assert _arrays._constant(7, 1.0, F32) is not ones
    np.testing.assert_array_equal(_arrays._constant(7, 1.0, F32).copy_to_host(), np.ones(7, F32))


@needs_cuda
def test_constants_pools_and_parameters_are_kept_per_device(gpu, monkeypatch):
    cuda, _arrays = gpu
    monkeypatch.setattr(_pool, "_pools", dict(_pool._pools))   # forget the pool of "device 1" afterwards
    monkeypatch.setattr(_arrays, "_pools", dict(_arrays._pools))
    weight = np.linspace(0.5, 1.5, 6).astype(np.float32)
    on_0 = _arrays._constant(5, 1.0, F32), _arrays.device_pool(), _arrays.vector(weight, 6, 1.0, F32)
    monkeypatch.setattr(_arrays, "_device_id", lambda: 1)
    on_1 = _arrays._constant(5, 1.0, F32), _arrays.device_pool(), _arrays.vector(weight, 6, 1.0, F32)
    assert on_0[0] is not on_1[0] and on_0[1] is not on_1[1] and _address(on_0[2]) != _address(on_1[2])
    assert _arrays._constant(5, 1.0, F32) is on_1[0] and _arrays.device_pool() is on_1[1]
    nbn.empty_cache()


@needs_cuda
def test_host_parameters_are_kept_on_the_device_and_refreshed_when_changed(gpu):
    cuda, _arrays = gpu
    weight = np.linspace(0.5, 1.5, 6).astype(np.float32)
    kept = _address(_arrays.vector(weight, 6, 1.0, F32))
    assert _address(_arrays.vector(weight, 6, 1.0, F32)) == kept
    weight *= 2.0                       # updated in place, as an optimizer does
    again = _arrays.vector(weight, 6, 1.0, F32)
    assert _address(again) == kept      # uploaded again into the same memory
    np.testing.assert_array_equal(again.copy_to_host(), weight)
    assert _arrays.vector(weight, 6, 1.0, np.float64).dtype == np.float64    # one entry per dtype
    large = np.ones(_arrays.PARAM_CHECK_BYTES // 4 + 1, np.float32)         # not kept: copied every call
    first = _arrays.vector(large, large.size, 1.0, F32)
    assert _address(_arrays.vector(large, large.size, 1.0, F32)) != _address(first)


@needs_cuda
@pytest.mark.parametrize("on_device", [False, True], ids=["host", "device"])
def test_dtype_none_keeps_float16(gpu, on_device):
    cuda, _arrays = gpu
    x = np.arange(2 * 3 * 4, dtype=np.float16).reshape(2, 3, 4)
    xin = cuda.to_device(x) if on_device else x
    x2, undo = _arrays.rows(xin, (1,), None)
    assert x2.dtype == np.float16 and tuple(x2.shape) == (8, 3)
    np.testing.assert_array_equal(x2.copy_to_host(), np.moveaxis(x, 1, -1).reshape(8, 3))
    x3, _ = _arrays.channels(xin, 1, None)
    assert x3.dtype == np.float16 and tuple(x3.shape) == (2, 3, 4)
    assert _arrays.to_device(xin, None).dtype == np.float16
    assert _arrays.rows(xin, (1,), np.float32)[0].dtype == np.float32       # callers' casts unchanged

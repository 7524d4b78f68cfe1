"""The GPU's per-channel statistics primitive and spectral norm's products (the simulator in CI).

- channels-last statistics in one pass over x: large-mean float32 data (``1e4 + randn``),
  data near 1e30 and 1e-30, rows fused for few channels (with a short last fused row and
  chunks that hold no value of some columns), against float64;
- the merge of the partials: counts from the shape (no host-to-device copy), a fixed order
  (the same bits call after call, and for any grid);
- float16 device arrays read directly by the kernels, computing in float32, against float64;
- spectral norm's ``W v`` and ``W^T u`` in float32 against float64;
- every op of these kernels gives the same bits whatever the number of blocks (``MAX_BLOCKS``).
"""
from __future__ import annotations

import numpy as np
import pytest

import numbanorm as nbn
from _helpers import assert_bitwise, assert_close, rng_for

if "cuda" not in nbn.available_backends():
    pytest.skip("the cuda backend is not available (no GPU, NUMBA_ENABLE_CUDASIM unset)",
                allow_module_level=True)

from numba import cuda  # noqa: E402

from numbanorm.cuda import _launch, channelwise, spectral_norm  # noqa: E402

pytestmark = pytest.mark.cuda

# (A, C, B): channels-last ones (B == 1) fuse ROW_WARP // C rows when C is small
SHAPES = [
    (9, 1, 1),      # 4 rows fused (simulator): 3 fused rows, the last with one value; an empty chunk per column
    (29, 2, 1),     # 2 rows fused, the last fused row short
    (64, 3, 1),     # several chunks per column
    (40, 5, 1),
    (3, 2, 45),     # channels-first, planes cut in pieces
    (4, 3, 10),
]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]


def _stats64(x3):
    x = np.asarray(x3, np.float64)
    return x.mean(axis=(0, 2)), x.std(axis=(0, 2))


def _moments(x3, eps=1e-5):
    mean, std, rstd = channelwise.moments(cuda.to_device(x3), eps)
    return mean.copy_to_host(), std.copy_to_host(), rstd.copy_to_host()


# ----------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("offset, sigma", [(1e4, 1.0), (1e3, 0.01), (0.0, 1.0)], ids=["1e4+randn", "1e3+0.01randn",
                                                                                     "randn"])
def test_statistics_of_large_mean_float32_data(shape, offset, sigma):
    """One pass of shifted sums in float32: the mean to its float32 rounding, the std to a few
    float32 ulps, plus what the rounding of the partial means and of the merged mean (half an ulp
    of the data each) adds up to in the merge: about ``2 * ulp / (sigma * sqrt(n))``, negligible
    but for small batches."""
    rng = rng_for("large-mean", shape, offset)
    x3 = (offset + sigma * rng.standard_normal(shape)).astype(np.float32)
    mean, std, rstd = _moments(x3, eps=0.0)
    mean64, std64 = _stats64(x3)
    assert mean.dtype == std.dtype == np.float32
    ulp = float(np.spacing(np.float32(offset + 4 * sigma)))
    np.testing.assert_allclose(mean, mean64, rtol=0, atol=ulp)
    tol = 1e-5 + 4 * ulp / (sigma * np.sqrt(shape[0] * shape[2]))
    np.testing.assert_allclose(std, std64, rtol=tol)
    np.testing.assert_allclose(rstd, 1 / std64, rtol=tol)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_statistics_of_float32_data_whose_squares_overflow_or_underflow(shape, scale):
    rng = rng_for("extreme", shape, scale)
    x3 = (scale * (1.5 + 0.5 * rng.standard_normal(shape))).astype(np.float32)
    mean, std, _ = _moments(x3)
    mean64, std64 = _stats64(x3)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)
    np.testing.assert_allclose(mean, mean64, rtol=1e-6)
    np.testing.assert_allclose(std, std64, rtol=1e-5)


@pytest.mark.parametrize("shape", [(7, 3, 1), (2, 3, 4)], ids=["last", "first"])
def test_constant_channels_have_zero_std(shape):
    x3 = np.broadcast_to(np.array([3.75, -1e4, 0.5], np.float32)[None, :, None], shape).copy()
    mean, std, _ = _moments(x3)
    np.testing.assert_array_equal(mean, x3[0, :, 0])
    np.testing.assert_array_equal(std, 0.0)


# ----------------------------------------------------------------------------- the merge

def _count_uploads(monkeypatch):
    """Counts host-to-device copies: ``cuda.to_device`` and a device array's ``copy_to_device``."""
    calls = []
    cls = type(cuda.device_array(1))
    copy_to_device, to_device = cls.copy_to_device, cuda.to_device

    def counting_copy(self, *args, **kwargs):
        calls.append(self.shape)
        return copy_to_device(self, *args, **kwargs)

    def counting_to_device(a, *args, **kwargs):
        calls.append(np.shape(a))
        return to_device(a, *args, **kwargs)

    monkeypatch.setattr(cls, "copy_to_device", counting_copy)
    monkeypatch.setattr(cuda, "to_device", counting_to_device)
    return calls


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_training_statistics_copy_nothing_to_the_device(shape, monkeypatch):
    """The counts of the partials come from the shape: no host array is made and copied over;
    device running statistics are updated in place, without a copy."""
    rng = rng_for("uploads", shape)
    x3 = cuda.to_device((1.0 + rng.standard_normal(shape)).astype(np.float32))
    dy3 = cuda.to_device(rng.standard_normal(shape).astype(np.float32))
    running_mean, running_var = cuda.to_device(np.zeros(shape[1], np.float32)), cuda.to_device(np.ones(shape[1],
                                                                                                         np.float32))
    uploads = _count_uploads(monkeypatch)
    mean, std, rstd = channelwise.moments(x3, 1e-5)
    channelwise.update_running_stats(running_mean, running_var, mean, std, shape[0] * shape[2], 0.1)
    y3 = channelwise.normalize(x3, mean, rstd, None, None, np.float32)
    channelwise.grads(x3, dy3, mean, rstd, None, True, np.float32)
    assert uploads == []
    mean64, std64 = _stats64(x3.copy_to_host())
    n = shape[0] * shape[2]
    np.testing.assert_allclose(running_mean.copy_to_host(), 0.1 * mean64, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(running_var.copy_to_host(), 0.9 + 0.1 * std64**2 * n / (n - 1), rtol=1e-5)
    assert y3.shape == shape


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_merge_is_in_a_fixed_order(shape):
    """Same input, same bits: the merge order depends on the shape only."""
    rng = rng_for("order", shape)
    x3 = cuda.to_device((1e4 + rng.standard_normal(shape)).astype(np.float32))
    first = [a.copy_to_host() for a in channelwise.moments(x3, 1e-5)]
    for _ in range(2):
        again = [a.copy_to_host() for a in channelwise.moments(x3, 1e-5)]
        for name, a, b in zip(("mean", "std", "rstd"), again, first):
            assert_bitwise(a, b, name)


# ----------------------------------------------------------------------------- float16 read directly

@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_float16_device_arrays_are_read_directly(shape):
    """The kernels take float16 x and dy as they are (no cast pass) and compute in float32."""
    rng = rng_for("float16", shape)
    x = (3.0 + 2.0 * rng.standard_normal(shape)).astype(np.float16)
    dy = rng.standard_normal(shape).astype(np.float16)
    w = (1.0 + 0.1 * rng.standard_normal(shape[1])).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    xd, dyd = cuda.to_device(x), cuda.to_device(dy)

    mean, std, rstd = channelwise.moments(xd, 1e-5)
    assert mean.dtype == std.dtype == rstd.dtype == np.float32
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mean64, std64 = _stats64(x64)
    rstd64 = 1 / np.sqrt(std64**2 + 1e-5)
    np.testing.assert_allclose(mean.copy_to_host(), mean64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.copy_to_host(), std64, rtol=1e-5)

    y = channelwise.normalize(xd, mean, rstd, cuda.to_device(w), cuda.to_device(b), np.float16)
    assert y.dtype == np.float16
    xhat = (x64 - mean64[None, :, None]) * rstd64[None, :, None]
    assert_close(y.copy_to_host(), xhat * w[None, :, None] + b[None, :, None], 5e-3, "y")

    dx, dweight, dbias = channelwise.grads(xd, dyd, mean, rstd, cuda.to_device(w), True, np.float16)
    assert dx.dtype == np.float16 and dweight.dtype == dbias.dtype == np.float32
    sum_dy, sum_dyx = dy64.sum(axis=(0, 2)), (dy64 * xhat).sum(axis=(0, 2))
    n = shape[0] * shape[2]
    dx64 = (rstd64 * w)[None, :, None] * (dy64 - (sum_dy[None, :, None] + xhat * sum_dyx[None, :, None]) / n)
    assert_close(dbias.copy_to_host(), sum_dy, 1e-5, "dbias")
    assert_close(dweight.copy_to_host(), sum_dyx, 1e-5, "dweight")
    assert_close(dx.copy_to_host(), dx64, 5e-3, "dx")


# ----------------------------------------------------------------------------- spectral norm's products

@pytest.mark.parametrize("shape", [(9, 37), (3, 200), (40, 6)], ids=["warp-rows", "block-rows", "many-rows"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_spectral_norm_products(shape, dtype):
    """``W v`` (a warp or a block per row) and ``W^T u`` (partial rows, then column sums), in W's dtype."""
    rng = rng_for("spectral", shape)
    W = rng.standard_normal(shape).astype(dtype)
    v, u = rng.standard_normal(shape[1]), rng.standard_normal(shape[0])
    W64 = W.astype(np.float64)
    Wd = cuda.to_device(W)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    wv, wtu = spectral_norm.times(Wd, v), spectral_norm.transpose_times(Wd, u)
    assert wv.dtype == wtu.dtype == np.float64
    # relative to the size of the terms added (what float32 sums can be held to)
    np.testing.assert_allclose(wv, W64 @ v, rtol=0, atol=tol * np.sqrt(shape[1]) * (np.abs(W64) @ np.abs(v)).max())
    np.testing.assert_allclose(wtu, W64.T @ u, rtol=0, atol=tol * np.sqrt(shape[0]) * (np.abs(W64).T @ np.abs(u)).max())


# ----------------------------------------------------------------------------- any grid, the same bits

@pytest.fixture
def max_blocks(monkeypatch):
    """``set(n)``: launch every kernel with at most ``n`` blocks (grid-stride loops cover the rest):
    ``MAX_BLOCKS`` in every module of the backend that has it, and the cached launch configurations."""
    import sys
    modules = [m for name, m in list(sys.modules.items())
               if name.startswith("numbanorm.cuda") and hasattr(m, "MAX_BLOCKS")]
    cached = {id(f): f for m in modules for f in vars(m).values() if hasattr(f, "cache_clear")}.values()

    def set_blocks(n):
        for module in modules:
            monkeypatch.setattr(module, "MAX_BLOCKS", n)
        for config in cached:
            config.cache_clear()

    yield set_blocks
    for config in cached:
        config.cache_clear()


def _channel_ops(x, dy, axis):
    """Every output of batch norm (training, then eval), batch renorm, and LRN on device arrays."""
    C = x.shape[axis]
    rng = rng_for("grid-params", x.shape, axis)
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    running = dict(running_mean=cuda.to_device(np.zeros(C, np.float32)),
                   running_var=cuda.to_device(np.ones(C, np.float32)))
    xd, dyd = cuda.to_device(x), cuda.to_device(dy)
    out = {}
    y, cache = nbn.batch_norm_forward(xd, weight=w, bias=b, training=True, axis=axis, **running)
    out.update(bn_y=y, bn_mean=cache.mean, bn_rstd=cache.rstd, **{f"bn_{k}": v for k, v in running.items()})
    out.update(zip(("bn_dx", "bn_dw", "bn_db"), nbn.batch_norm_backward(dyd, cache)))
    y, cache = nbn.batch_norm_forward(xd, weight=w, bias=b, training=False, axis=axis, **running)
    out.update(zip(("eval_y", "eval_dx", "eval_dw", "eval_db"), (y, *nbn.batch_norm_backward(dyd, cache))))
    y, cache = nbn.batch_renorm_forward(xd, weight=w, bias=b, training=True, axis=axis, **running)
    out.update(zip(("renorm_y", "renorm_dx", "renorm_dw", "renorm_db"), (y, *nbn.batch_renorm_backward(dyd, cache))))
    y, cache = nbn.local_response_norm_forward(xd, 3, axis=axis)
    out.update(zip(("lrn_y", "lrn_dx"), (y, *nbn.local_response_norm_backward(dyd, cache))))
    return {k: v.copy_to_host() for k, v in out.items()}


def _spectral_ops(w, dy, u):
    ud = cuda.to_device(u)
    y, cache = nbn.spectral_norm_forward(cuda.to_device(w), ud, n_power_iterations=2)
    (dw,) = nbn.spectral_norm_backward(cuda.to_device(dy), cache)
    return {"y": y.copy_to_host(), "dw": dw.copy_to_host(), "u": ud.copy_to_host(), "sigma": np.float64(cache.sigma)}


def _assert_same_bits_for_any_grid(run, max_blocks):
    """``run()``'s results are the same bits with grids of MAX_BLOCKS, 1 and 3 blocks."""
    results = []
    for blocks in (_launch.MAX_BLOCKS, 1, 3):
        max_blocks(blocks)
        results.append(run())
    for other in results[1:]:
        for name in results[0]:
            assert_bitwise(other[name], results[0][name], name)


@pytest.mark.parametrize("shape, axis", [((6, 4, 9), 1), ((2, 31, 3), -1), ((3, 9, 2), -1)],
                         ids=["first", "last", "last-fused"])
def test_channel_ops_give_the_same_bits_for_any_grid(shape, axis, max_blocks):
    rng = rng_for("grid", shape, axis)
    x = (1e3 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    _assert_same_bits_for_any_grid(lambda: _channel_ops(x, dy, axis), max_blocks)


def test_spectral_norm_gives_the_same_bits_for_any_grid(max_blocks):
    rng = rng_for("grid-spectral")
    w, dy = rng.standard_normal((13, 3, 7)).astype(np.float32), rng.standard_normal((13, 3, 7)).astype(np.float32)
    u = rng.standard_normal(13).astype(np.float32)
    _assert_same_bits_for_any_grid(lambda: _spectral_ops(w, dy, u), max_blocks)

"""The CPU backend reuses large output buffers only once nothing refers to them."""
import numpy as np

import numbanorm as nbn
from numbanorm.cpu._kernel import OutputPool


def _address(a):
    return a.__array_interface__["data"][0]


def test_pool_reuses_a_dropped_buffer_and_never_a_live_one():
    pool = OutputPool(min_bytes=1024, max_buffers=2)
    a = pool.empty((64, 64), np.float32)
    b = pool.empty((64, 64), np.float32)
    assert _address(a) != _address(b)
    kept = _address(a)
    del a
    c = pool.empty((64, 64), np.float32)
    assert _address(c) == kept
    view = c[1:]
    del c
    d = pool.empty((64, 64), np.float32)
    assert _address(d) != kept and _address(view) == kept + 64 * 4
    assert pool.empty((8,), np.float32).base is None  # small arrays bypass the pool


def test_outputs_of_successive_calls_never_share_memory_while_alive():
    x = np.random.default_rng(0).standard_normal((2048, 1024)).astype(np.float32)  # 8 MiB: pooled
    y1 = nbn.layer_norm(x, backend="cpu")
    expected = y1.copy()
    y2 = nbn.layer_norm(x * 2.0 + 1.0, backend="cpu")
    assert not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y1, expected)
    del y2
    y3 = nbn.layer_norm(x, backend="cpu")
    np.testing.assert_array_equal(y1, expected)
    np.testing.assert_array_equal(y3, expected)

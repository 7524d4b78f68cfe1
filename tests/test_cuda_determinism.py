"""The cuda backend gives the same bits on every GPU.

Work is split by shape only: the number of partial rows of every two-stage
reduction is fixed per shape (``_launch.PARTIAL_ROWS``), never taken from the
GPU's SM count, so the order of every addition is the same everywhere. What a
GPU model could still change is the size of the grids (``_launch.MAX_BLOCKS``),
and with it which block handles which rows: here the same calls run with the
launch tables of differently sized GPUs (grids capped at 1 to 4 blocks in the
simulator) and must agree bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

import numbanorm as nbn
from _helpers import backward, forward, make_params, rng_for

if "cuda" not in nbn.available_backends():
    pytest.skip("the cuda backend is not available (no GPU, NUMBA_ENABLE_CUDASIM unset)",
                allow_module_level=True)

from numbanorm.cuda import _launch  # noqa: E402

pytestmark = pytest.mark.cuda

CASES = [
    ("layer_norm", (9, 6), dict(axis=-1), "wb", False),           # rows in registers, several rows a block
    ("layer_norm", (5, 40), dict(axis=-1), "wb", False),          # long rows
    ("rms_norm", (7, 12), dict(), "w", False),
    ("group_norm", (3, 6, 5), dict(num_groups=3), "wb", False),   # segments
    ("instance_norm", (3, 4, 6), dict(), "wb", False),             # a weight per row
    ("batch_norm", (5, 3, 7), dict(training=True), "wb", True),
    ("batch_norm", (9, 5), dict(training=True, axis=-1), "wb", True),
]


def _configs():
    return [getattr(_launch, name) for name in dir(_launch)
            if name.endswith("_config") and hasattr(getattr(_launch, name), "cache_clear")]


@pytest.fixture
def gpu_of_blocks(monkeypatch):
    """Switch to the launch tables of a GPU whose grids have at most ``blocks`` blocks."""
    def switch(blocks):
        monkeypatch.setattr(_launch, "MAX_BLOCKS", blocks)
        for config in _configs():
            config.cache_clear()
    yield switch
    monkeypatch.undo()
    for config in _configs():
        config.cache_clear()


def _run(op, shape, kw, affine, running):
    rng = rng_for("cuda-determinism", op, shape)
    x = (3.0 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    params = make_params(rng, op, shape, kw, affine, running, np.float32)
    y, cache = forward(op, x, "cuda", **params)
    grads = backward(op, dy, cache)
    stats = [params[k] for k in ("running_mean", "running_var") if k in params]
    return [np.asarray(a) for a in (y, cache.rstd, *grads, *stats) if a is not None]


@pytest.mark.parametrize("op, shape, kw, affine, running", CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_results_are_the_same_bits_with_every_gpus_launch_tables(op, shape, kw, affine, running, gpu_of_blocks):
    results = []
    for blocks in (4, 3, 2, 1):
        gpu_of_blocks(blocks)
        results.append(_run(op, shape, kw, affine, running))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_no_launch_choice_reads_the_gpu():
    """The partial rows are a constant of the shape, whatever the current device's SM count."""
    assert _launch.partial_rows_limit() == _launch.PARTIAL_ROWS
    source = open(_launch.__file__).read()
    assert "MULTIPROCESSOR_COUNT" not in source and "get_current_device" not in source

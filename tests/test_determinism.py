"""The "cpu" backend's results do not depend on the number of threads or on concurrency.

Shapes are large enough to take the parallel path. Results must be bitwise equal
with one Numba thread and with all of them (every op), and when 8 Python threads
call the same op at once.
"""
from __future__ import annotations

from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import numbanorm as nbn

from _helpers import GRAD_NAMES, assert_bitwise, backward, copy_kwargs, forward, make_params, rng_for

numba = pytest.importorskip("numba")

Setup = namedtuple("Setup", "op shape kw affine running")
SETUPS = [
    Setup("layer_norm", (512, 300), dict(axis=-1), "wb", False),
    Setup("layer_norm", (16, 8, 30, 30), dict(axis=(1, 3)), "wb", False),
    Setup("rms_norm", (512, 300), dict(axis=-1), "w", False),
    # (batch norm: above cpu/channelwise.SMALL_BELOW, so the parallel item kernels run)
    Setup("batch_norm", (16, 8, 48, 48), dict(training=True), "wb", True),
    Setup("batch_norm", (16, 48, 48, 8), dict(training=True, axis=-1), "wb", True),
    Setup("batch_norm", (16, 8, 48, 48), dict(training=False), "wb", True),
    Setup("group_norm", (8, 16, 20, 20), dict(num_groups=4), "wb", False),
    Setup("group_norm", (8, 20, 20, 16), dict(num_groups=4, axis=-1), "wb", False),
    Setup("instance_norm", (8, 16, 20, 20), dict(), "wb", True),
    Setup("instance_norm", (8, 20, 20, 16), dict(axis=-1), "wb", True),
]
IDS = [f"{s.op}-{'x'.join(map(str, s.shape))}-{'-'.join(f'{k}{v}' for k, v in s.kw.items())}" for s in SETUPS]


def _inputs(s):
    rng = rng_for("determinism", s.op, s.shape, tuple(s.kw.items()))
    x = (1.0 + 2.0 * rng.standard_normal(s.shape)).astype(np.float32)
    dy = rng.standard_normal(s.shape).astype(np.float32)
    kw = make_params(rng, s.op, s.shape, s.kw, s.affine, s.running, np.float32)
    return x, dy, kw


def _run(s, x, dy, kw):
    """Forward and backward on "cpu"; returns every output array, running stats included."""
    kw = copy_kwargs(kw)
    y, cache = forward(s.op, x, "cpu", **kw)
    grads = backward(s.op, dy, cache)
    out = {"y": y, "mean": cache.mean, "rstd": cache.rstd}
    out.update(zip(GRAD_NAMES[s.op], grads))
    out.update({k: kw[k] for k in ("running_mean", "running_var") if k in kw})
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert_bitwise(a[k], b[k], k)


def _assert_thread_independent(run):
    """``run()`` gives bitwise the same arrays with one Numba thread and with all of them."""
    most = numba.config.NUMBA_NUM_THREADS
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
        numba.set_num_threads(most)
        many = run()
        if most > 2:
            numba.set_num_threads(max(2, most // 2 + 1))  # an uneven split of the work too
            _assert_same(run(), one)
    finally:
        numba.set_num_threads(before)
    _assert_same(many, one)


def _assert_concurrent_same(run):
    """``run()`` called by 8 Python threads at once gives bitwise what one call gives."""
    single = run()
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(run) for _ in range(8)]
        results = [f.result(timeout=300) for f in futures]
    for r in results:
        _assert_same(r, single)


@pytest.mark.parametrize("s", SETUPS, ids=IDS)
def test_bitwise_equal_for_any_thread_count(s):
    x, dy, kw = _inputs(s)
    _assert_thread_independent(lambda: _run(s, x, dy, kw))


@pytest.mark.parametrize("s", [SETUPS[0], SETUPS[3], SETUPS[6], SETUPS[9]], ids=[IDS[0], IDS[3], IDS[6], IDS[9]])
def test_concurrent_python_threads_get_identical_results(s):
    x, dy, kw = _inputs(s)
    _assert_concurrent_same(lambda: _run(s, x, dy, kw))


def test_repeated_calls_are_bitwise_equal():
    s = SETUPS[3]
    x, dy, kw = _inputs(s)
    _assert_same(_run(s, x, dy, kw), _run(s, x, dy, kw))


# ----------------------------------------------------------------------------- the variants
# Each runs forward and backward on "cpu" from fresh copies of its inputs and returns every
# array it produced or wrote (running statistics, spectral norm's u).

def _batch_renorm(x, dy, rng, axis=1):
    c = x.shape[axis]
    kw = dict(weight=rng.uniform(0.5, 1.5, c).astype(np.float32), bias=rng.standard_normal(c).astype(np.float32),
              running_mean=(0.3 * rng.standard_normal(c)).astype(np.float32),
              running_var=rng.uniform(0.5, 2.0, c).astype(np.float32))

    def run():
        k = copy_kwargs(kw)
        y, cache = nbn.batch_renorm_forward(x, training=True, rmax=1.5, dmax=0.5, axis=axis, backend="cpu", **k)
        dx, dw, db = nbn.batch_renorm_backward(dy, cache)
        return dict(y=y, dx=dx, dweight=dw, dbias=db, running_mean=k["running_mean"], running_var=k["running_var"])
    return run


def _local_response_norm(x, dy, rng, axis=1):
    def run():
        y, cache = nbn.local_response_norm_forward(x, 5, alpha=1e-2, axis=axis, backend="cpu")
        return dict(y=y, dx=nbn.local_response_norm_backward(dy, cache)[0])
    return run


def _weight_norm(x, dy, rng, axis=0):
    g = rng.uniform(0.5, 1.5, () if axis is None else x.shape[axis]).astype(np.float32)

    def run():
        y, cache = nbn.weight_norm_forward(x, g, axis=axis, backend="cpu")
        dv, dg = nbn.weight_norm_backward(dy, cache)
        return dict(y=y, dv=dv, dg=dg)
    return run


def _spectral_norm(x, dy, rng, axis=0):
    u0 = rng.standard_normal(x.shape[axis]).astype(np.float32)

    def run():
        u = u0.copy()
        y, cache = nbn.spectral_norm_forward(x, u, n_power_iterations=2, axis=axis, backend="cpu")
        return dict(y=y, u=u, dw=nbn.spectral_norm_backward(dy, cache)[0], sigma=np.asarray(cache.sigma))
    return run


VARIANTS = [
    (_batch_renorm, (16, 8, 30, 30), {}),
    (_batch_renorm, (16, 30, 30, 8), dict(axis=-1)),
    (_local_response_norm, (8, 16, 20, 20), {}),
    (_local_response_norm, (8, 20, 20, 16), dict(axis=-1)),
    (_weight_norm, (300, 512), {}),
    (_weight_norm, (64, 32, 5, 5), dict(axis=1)),
    (_weight_norm, (300, 512), dict(axis=None)),
    (_spectral_norm, (300, 517), {}),
    (_spectral_norm, (64, 32, 5, 5), dict(axis=1)),
]
VARIANT_IDS = [f"{f.__name__[1:]}-{'x'.join(map(str, shape))}-{kw}" for f, shape, kw in VARIANTS]


def _variant_run(make, shape, kw):
    """The ``run`` of one of :data:`VARIANTS`, on its inputs."""
    rng = rng_for("determinism-variants", make.__name__, shape, tuple(kw.items()))
    x = (1.0 + 2.0 * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return make(x, dy, rng, **kw)


@pytest.mark.parametrize("make, shape, kw", VARIANTS, ids=VARIANT_IDS)
def test_variants_bitwise_equal_for_any_thread_count(make, shape, kw):
    _assert_thread_independent(_variant_run(make, shape, kw))


@pytest.mark.parametrize("make, shape, kw", VARIANTS[::2], ids=VARIANT_IDS[::2])
def test_variants_concurrent_python_threads_get_identical_results(make, shape, kw):
    _assert_concurrent_same(_variant_run(make, shape, kw))

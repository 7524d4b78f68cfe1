"""The thin path: a forward called again with the same signature skips the checks it passed.

What it keeps per signature must never leak one call's arrays or values into the next:
each call's own arrays are the ones read and written, every check that depends on
anything but the signature still runs, and a call with any other signature (a read-only
buffer, another dtype, a bad eps) takes the full path and raises as before.
"""
from __future__ import annotations

import numpy as np
import pytest

import numbanorm as nbn
from _helpers import assert_bitwise, rng_for


def _plans(op):
    return getattr(nbn, op + "_forward").plans


def test_a_repeated_call_takes_a_plan_and_gives_the_same_bits(backend):
    rng = rng_for("thin", "same")
    x = rng.standard_normal((6, 10)).astype(np.float32)
    w, b = rng.uniform(0.5, 1.5, 10).astype(np.float32), rng.standard_normal(10).astype(np.float32)
    _plans("layer_norm").clear()
    y_full, cache_full = nbn.layer_norm_forward(x, weight=w, bias=b, backend=backend)
    assert [plan is not None for plan in _plans("layer_norm").values()] == [True]
    y_thin, cache_thin = nbn.layer_norm_forward(x, weight=w, bias=b, backend=backend)
    assert_bitwise(y_thin, y_full, "y")
    dy = rng.standard_normal(x.shape).astype(np.float32)
    for got, want, name in zip(nbn.layer_norm_backward(dy, cache_thin), nbn.layer_norm_backward(dy, cache_full),
                               ("dx", "dweight", "dbias")):
        assert_bitwise(got, want, name)


def test_each_call_reads_and_writes_its_own_arrays(backend):
    """Same signature, new arrays: the new weights, inputs and running buffers are the ones used."""
    rng = rng_for("thin", "own")
    shape = (8, 3, 5)
    runs = []
    for _ in range(3):
        runs.append(dict(x=rng.standard_normal(shape), weight=rng.uniform(0.5, 1.5, 3), bias=rng.standard_normal(3),
                         running_mean=rng.standard_normal(3), running_var=rng.uniform(0.5, 2, 3)))
    _plans("batch_norm").clear()
    got = []
    for r in runs:
        args = {k: v.copy() for k, v in r.items()}
        y, _ = nbn.batch_norm_forward(args.pop("x"), training=True, backend=backend, **args)
        got.append((y, args["running_mean"], args["running_var"]))
    assert [plan is not None for plan in _plans("batch_norm").values()] == [True]
    for r, (y, rm, rv) in zip(runs, got):
        args = {k: v.copy() for k, v in r.items()}
        y_ref, _ = nbn.batch_norm_forward(args.pop("x"), training=True, backend="numpy", **args)
        np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(rm, args["running_mean"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(rv, args["running_var"], rtol=1e-10, atol=1e-12)


def test_a_cast_weight_is_cast_afresh_each_call(backend):
    """float16 weights on float32 data are cast to the compute dtype: the cast of this call's weight."""
    rng = rng_for("thin", "cast")
    x = rng.standard_normal((4, 6)).astype(np.float32)
    w1, w2 = (rng.uniform(0.5, 1.5, 6).astype(np.float16) for _ in range(2))
    nbn.layer_norm_forward(x, weight=w1, backend=backend)
    y2, _ = nbn.layer_norm_forward(x, weight=w2, backend=backend)
    y2_ref, _ = nbn.layer_norm_forward(x, weight=w2.astype(np.float32), backend="numpy")
    np.testing.assert_allclose(y2, y2_ref, rtol=1e-5, atol=1e-5)


def test_the_cumulative_average_counts_every_planned_call(backend):
    x = rng_for("thin", "cumulative").standard_normal((5, 4))
    rm, rv, count = np.zeros(4), np.ones(4), np.zeros(1, np.int64)
    for _ in range(4):
        nbn.batch_norm_forward(x, training=True, running_mean=rm, running_var=rv, momentum=None,
                               num_batches_tracked=count, backend=backend)
    assert count[0] == 4
    np.testing.assert_allclose(rm, x.mean(axis=0), rtol=1e-12)  # the average of four equal batches


def test_a_read_only_buffer_after_a_planned_call_still_raises_and_writes_nothing(backend):
    rng = rng_for("thin", "read-only")
    x = rng.standard_normal((6, 4))
    rm, rv = np.zeros(4), np.ones(4)
    nbn.batch_norm_forward(x, training=True, running_mean=rm, running_var=rv, backend=backend)
    frozen_mean, rv2 = np.zeros(4), np.ones(4)
    frozen_mean.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean is read-only"):
        nbn.batch_norm_forward(x, training=True, running_mean=frozen_mean, running_var=rv2, backend=backend)
    assert (rv2 == 1).all()


@pytest.mark.parametrize("change, error", [
    (dict(eps=-1.0), "eps must be a positive number"),
    (dict(weight=np.ones(5)), "weight has shape"),
    (dict(x=np.ones((3, 4), np.int64)), "numbanorm supports float16, float32 and float64"),
    (dict(axis=5), "out of range"),
])
def test_a_call_that_differs_from_a_planned_one_takes_the_full_checks(backend, change, error):
    kwargs = dict(x=np.ones((3, 4)), weight=np.ones(4), eps=1e-5, axis=-1)
    nbn.layer_norm_forward(kwargs.pop("x"), backend=backend, **kwargs)
    nbn.layer_norm_forward(np.ones((3, 4)), backend=backend, **kwargs)
    bad = dict(dict(x=np.ones((3, 4)), **kwargs), **change)
    with pytest.raises((ValueError, TypeError), match=error):
        nbn.layer_norm_forward(bad.pop("x"), backend=backend, **bad)


def test_the_backend_in_force_is_part_of_the_signature():
    x = np.ones((3, 4))
    _, cache = nbn.layer_norm_forward(x)
    assert cache.backend == "cpu"
    with nbn.backend("numpy"):
        _, cache = nbn.layer_norm_forward(x)
    assert cache.backend == "numpy"


def test_arguments_the_plans_do_not_key_take_the_full_path():
    """Lists (and device arrays) are never keyed: each such call is checked in full."""
    _plans("layer_norm").clear()
    y, _ = nbn.layer_norm_forward([[1.0, 2.0, 3.0]], weight=[1.0, 1.0, 1.0])
    assert not _plans("layer_norm")
    np.testing.assert_allclose(y, nbn.layer_norm(np.array([[1.0, 2.0, 3.0]])))


@pytest.mark.parametrize("shape, axis", [((32, 16), 1), ((6, 5, 4, 3), 1), ((6, 4, 3, 5), -1)],
                         ids=["NxC", "NCHW", "NHWC"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_in_one_call_agrees_with_the_item_kernels(shape, axis, training, dtype, monkeypatch):
    """Small inputs take one compiled call each way (cpu/channelwise.small_forward/backward); the
    item kernels take the rest. Both give the reference's results, large-mean data included."""
    from numbanorm.cpu import channelwise
    from _helpers import assert_close, tol_for
    rng = rng_for("thin", "small-batch-norm", shape, axis, training)
    C = shape[axis]
    x = (1e3 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.uniform(0.5, 1.5, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    stats = (1e3 + rng.standard_normal(C)).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    results = {}
    for path, below in (("one call", 1 << 30), ("items", 0), ("numpy", None)):
        monkeypatch.setattr(channelwise, "SMALL_BELOW", below if below is not None else 1 << 30)
        rm, rv = stats[0].copy(), stats[1].copy()
        y, cache = nbn.batch_norm_forward(x, weight=w, bias=b, running_mean=rm, running_var=rv, training=training,
                                          axis=axis, backend="numpy" if below is None else "cpu")
        results[path] = (y, rm, rv, *nbn.batch_norm_backward(dy, cache))
    names = ("y", "running_mean", "running_var", "dx", "dweight", "dbias")
    for path in ("one call", "items"):
        for name, got, want in zip(names, results[path], results["numpy"]):
            assert_close(got, want, tol_for(dtype), f"{path} {name}")


@pytest.mark.cuda
def test_device_arrays_take_the_thin_path_with_their_own_arrays():
    """[cuda] Numba device arrays are keyed by shape and dtype: a repeated call binds the new arrays."""
    if "cuda" not in nbn.available_backends():
        pytest.skip("the cuda backend is not available (NUMBA_ENABLE_CUDASIM=1 runs it in the simulator)")
    from numba import cuda
    rng = rng_for("thin", "device")
    _plans("batch_norm").clear()
    for step in range(3):
        x, w = rng.standard_normal((8, 5)).astype(np.float32), rng.uniform(0.5, 1.5, 5).astype(np.float32)
        rm, rv = rng.standard_normal(5).astype(np.float32), rng.uniform(0.5, 2, 5).astype(np.float32)
        d_rm, d_rv = cuda.to_device(rm), cuda.to_device(rv)
        y, _ = nbn.batch_norm_forward(cuda.to_device(x), weight=cuda.to_device(w), running_mean=d_rm,
                                      running_var=d_rv, training=True)
        y_ref, _ = nbn.batch_norm_forward(x, weight=w, running_mean=rm, running_var=rv, training=True,
                                          backend="numpy")
        np.testing.assert_allclose(y.copy_to_host(), y_ref, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(d_rm.copy_to_host(), rm, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(d_rv.copy_to_host(), rv, rtol=2e-5, atol=2e-6)
        device_plans = [plan for key, plan in _plans("batch_norm").items() if key[2][0] is not np.ndarray]
        assert len(device_plans) == 1 and device_plans[0] is not None  # (None: the signature is not planned)

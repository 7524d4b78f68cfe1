"""Bad input raises the documented error, and every array the caller owns is left bit-identical.

Forward cases start from a valid training call with running statistics and a
``num_batches_tracked`` counter wherever the op has them, then break one thing,
so a check that ran after the first write would be caught by the snapshot.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from _helpers import OPS, Snapshot, backward, forward, plain, rng_for

SHAPE = (3, 4, 5)  # channels 4 along axis 1; layer/rms norm over the last axis, 5
C, L = 4, 5


def _base(op, rng):
    """Valid keyword arguments for ``op`` on SHAPE, training with every buffer present."""
    if op in ("batch_norm", "instance_norm"):
        kw = dict(weight=rng.uniform(0.5, 1.5, C), bias=rng.standard_normal(C),
                  running_mean=rng.standard_normal(C), running_var=rng.uniform(0.5, 2, C),
                  num_batches_tracked=np.zeros(1, np.int64), momentum=0.1)
        kw.update(training=True) if op == "batch_norm" else kw.update(use_input_stats=True)
        return kw
    if op == "group_norm":
        return dict(num_groups=2, weight=rng.uniform(0.5, 1.5, C), bias=rng.standard_normal(C))
    if op == "layer_norm":
        return dict(weight=rng.uniform(0.5, 1.5, L), bias=rng.standard_normal(L), axis=-1)
    return dict(weight=rng.uniform(0.5, 1.5, L), axis=-1)


def _readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


# Each case: (id, op, exception, regex, edit) where edit(x, kw) -> x and edits kw in place.
FORWARD_CASES = []


def fcase(id, op, exc, match, edit):
    FORWARD_CASES.append(pytest.param(op, exc, match, edit, id=id))


# --- dtypes of x: TypeError naming the dtype
for _op in OPS:
    for _dt in (np.int32, np.int64, np.bool_, np.complex128, object):
        _name = str(np.dtype(_dt))
        fcase(f"{_op}-x-{_name}", _op, TypeError, re.escape(_name),
              lambda x, kw, dt=_dt: (x * 3).astype(dt))
fcase("layer_norm-x-int-list", "layer_norm", TypeError, "int64",
      lambda x, kw: [[1, 2, 3], [4, 5, 6]])
fcase("batch_norm-weight-int", "batch_norm", TypeError, "int64",
      lambda x, kw: (kw.update(weight=np.ones(C, np.int64)), x)[1])
fcase("layer_norm-bias-complex", "layer_norm", TypeError, "complex128",
      lambda x, kw: (kw.update(bias=np.ones(L, np.complex128)), x)[1])
fcase("batch_norm-counter-float", "batch_norm", TypeError, "num_batches_tracked",
      lambda x, kw: (kw.update(num_batches_tracked=np.zeros(1)), x)[1])

# --- shapes of parameters and buffers
for _op in OPS:
    _wrong = C + 1 if _op in ("batch_norm", "group_norm", "instance_norm") else L + 1
    fcase(f"{_op}-weight-shape", _op, ValueError, "weight",
          lambda x, kw, n=_wrong: (kw.update(weight=np.ones(n)), x)[1])
    if _op != "rms_norm":
        fcase(f"{_op}-bias-shape", _op, ValueError, "bias",
              lambda x, kw, n=_wrong: (kw.update(bias=np.zeros((1, n - 1))), x)[1])
for _op in ("batch_norm", "instance_norm"):
    for _buf in ("running_mean", "running_var"):
        fcase(f"{_op}-{_buf}-shape", _op, ValueError, _buf,
              lambda x, kw, b=_buf: (kw.update({b: np.ones(C - 1)}), x)[1])
    fcase(f"{_op}-eval-running_var-shape", _op, ValueError, "running_var",
          lambda x, kw: (kw.update(running_var=np.ones(C + 2), training=False)
                         if "training" in kw else kw.update(running_var=np.ones(C + 2), use_input_stats=False),
                         x)[1])
fcase("layer_norm-weight-transposed", "layer_norm", ValueError, "weight",
      lambda x, kw: (kw.update(axis=(1, 2), weight=np.ones((L, C)), bias=np.zeros((C, L))), x)[1])

# --- axes
for _op in ("batch_norm", "group_norm", "instance_norm"):
    for _ax in (3, -4):
        fcase(f"{_op}-axis{_ax}-out-of-range", _op, ValueError, "out of range",
              lambda x, kw, a=_ax: (kw.update(axis=a), x)[1])
    for _ax in (0, -3):
        fcase(f"{_op}-axis{_ax}-is-batch", _op, ValueError, "batch axis",
              lambda x, kw, a=_ax: (kw.update(axis=a), x)[1])
for _op in ("layer_norm", "rms_norm"):
    fcase(f"{_op}-axis-out-of-range", _op, ValueError, "out of range",
          lambda x, kw: (kw.update(axis=3), x)[1])
    fcase(f"{_op}-axis-twice", _op, ValueError, "twice",
          lambda x, kw: (kw.update(axis=(2, -1)), x)[1])
    fcase(f"{_op}-axis-empty", _op, ValueError, "at least one axis",
          lambda x, kw: (kw.update(axis=()), x)[1])
fcase("batch_norm-1d-input", "batch_norm", ValueError, "dimensions",
      lambda x, kw: x[0, 0])
fcase("layer_norm-0d-input", "layer_norm", ValueError, "dimensions",
      lambda x, kw: (kw.pop("weight"), kw.pop("bias"), np.array(2.0))[2])

# --- group_norm num_groups
for _g in (3, 8, 0, -2):
    fcase(f"group_norm-num_groups{_g}", "group_norm", ValueError, "num_groups",
          lambda x, kw, g=_g: (kw.update(num_groups=g), x)[1])

# --- eps
for _op in OPS:
    for _eps in (0.0, -1e-5, float("nan")):
        fcase(f"{_op}-eps{_eps}", _op, ValueError, "eps",
              lambda x, kw, e=_eps: (kw.update(eps=e), x)[1])

# --- one value per channel / spatial element while training
fcase("batch_norm-train-1x4", "batch_norm", ValueError,
      "Expected more than 1 value per channel when training", lambda x, kw: x[:1, :, 0])
fcase("batch_norm-train-1x4x1", "batch_norm", ValueError,
      "Expected more than 1 value per channel when training", lambda x, kw: x[:1, :, :1])
fcase("batch_norm-train-1x1x4-last", "batch_norm", ValueError,
      "Expected more than 1 value per channel when training",
      lambda x, kw: (kw.update(axis=-1), x[:1, :1, :4])[1])
fcase("instance_norm-train-3x4x1", "instance_norm", ValueError,
      "Expected more than 1 spatial element when training", lambda x, kw: x[:, :, :1])
fcase("instance_norm-train-3x4", "instance_norm", ValueError,
      "Expected more than 1 spatial element when training", lambda x, kw: x[:, :, 0])

# --- momentum and the counter
for _op in ("batch_norm", "instance_norm"):
    fcase(f"{_op}-momentum-None-no-counter", _op, ValueError, "num_batches_tracked",
          lambda x, kw: (kw.update(momentum=None), kw.pop("num_batches_tracked"), x)[2])
    for _m in (1.5, -0.1):
        fcase(f"{_op}-momentum{_m}", _op, ValueError, "momentum",
              lambda x, kw, m=_m: (kw.update(momentum=m), x)[1])
    for _buf in ("running_mean", "running_var", "num_batches_tracked"):
        fcase(f"{_op}-readonly-{_buf}", _op, ValueError, "read-only",
              lambda x, kw, b=_buf: (kw.update({b: _readonly(kw[b])}), x)[1])
    fcase(f"{_op}-only-running_mean", _op, ValueError, "running_mean and running_var",
          lambda x, kw: (kw.pop("running_var"), x)[1])
fcase("batch_norm-eval-without-running", "batch_norm", ValueError, "required when training=False",
      lambda x, kw: (kw.update(training=False), kw.pop("running_mean"), kw.pop("running_var"), x)[3])
fcase("instance_norm-running-stats-without-running", "instance_norm", ValueError,
      "required when use_input_stats=False",
      lambda x, kw: (kw.update(use_input_stats=False), kw.pop("running_mean"), kw.pop("running_var"), x)[3])

# --- backend names
for _op in OPS:
    fcase(f"{_op}-unknown-backend", _op, ValueError, "unknown backend",
          lambda x, kw: (kw.update(backend="gpu"), x)[1])


def _arrays(x, kw):
    out = {"x": x} if isinstance(x, np.ndarray) else {}
    out.update({k: v for k, v in kw.items() if isinstance(v, np.ndarray)})
    return out


@pytest.mark.parametrize("op, exc, match, edit", FORWARD_CASES)
def test_forward_rejects_bad_input_and_writes_nothing(backend, op, exc, match, edit):
    rng = rng_for("errors", op)
    x = rng.standard_normal(SHAPE)
    kw = _base(op, rng)
    x = edit(x, kw)
    kw.setdefault("backend", backend)
    name = kw.pop("backend")
    snap = Snapshot(**_arrays(x, kw))
    with pytest.raises(exc, match=match):
        forward(op, x, name, **kw)
    snap.assert_unchanged()
    # the plain function raises the same way
    with pytest.raises(exc, match=match):
        plain(op, x, name, **kw)
    snap.assert_unchanged()


def test_sanity_base_calls_succeed(backend):
    """The unbroken calls the cases start from are valid (so each case fails for its own reason)."""
    for op in OPS:
        rng = rng_for("errors", op)
        x = rng.standard_normal(SHAPE)
        y, cache = forward(op, x, backend, **_base(op, rng))
        assert y.shape == SHAPE and cache.op == op


# ----------------------------------------------------------------------------- backward

BACKWARD_CASES = []
for _op in OPS:
    BACKWARD_CASES += [
        pytest.param(_op, ValueError, "dy", lambda dy, c: (dy[:, :, :-1], c), id=f"{_op}-dy-shape"),
        pytest.param(_op, ValueError, "dy", lambda dy, c: (dy[None], c), id=f"{_op}-dy-ndim"),
        pytest.param(_op, TypeError, "int64", lambda dy, c: (np.ones(SHAPE, np.int64), c), id=f"{_op}-dy-int"),
        pytest.param(_op, TypeError, "cache", lambda dy, c: (dy, (c.mean, c.rstd)), id=f"{_op}-not-a-cache"),
        pytest.param(_op, TypeError, "cache", lambda dy, c: (dy, None), id=f"{_op}-None-cache"),
        pytest.param(_op, ValueError, "unknown backend", lambda dy, c: (dy, c), id=f"{_op}-unknown-backend"),
    ]


@pytest.mark.parametrize("op, exc, match, edit", BACKWARD_CASES)
def test_backward_rejects_bad_input_and_writes_nothing(backend, op, exc, match, edit):
    rng = rng_for("errors-bwd", op)
    x = rng.standard_normal(SHAPE)
    kw = _base(op, rng)
    _, cache = forward(op, x, backend, **kw)
    dy, bad_cache = edit(rng.standard_normal(SHAPE), cache)
    extra = {"backend": "gpu"} if match == "unknown backend" else {}
    snap = Snapshot(x=x, dy=dy, mean=cache.mean, rstd=cache.rstd, **_arrays(None, kw),
                    **{f"saved_{k}": v for k, v in cache.saved.items() if isinstance(v, np.ndarray)})
    with pytest.raises(exc, match=match):
        backward(op, dy, bad_cache, **extra)
    snap.assert_unchanged()


@pytest.mark.parametrize("producer, consumer", [("layer_norm", "batch_norm"), ("batch_norm", "layer_norm"),
                                                ("group_norm", "instance_norm"), ("instance_norm", "group_norm"),
                                                ("layer_norm", "rms_norm"), ("rms_norm", "layer_norm")])
def test_backward_rejects_a_cache_from_another_op(backend, producer, consumer):
    rng = rng_for("foreign", producer)
    x = rng.standard_normal(SHAPE)
    kw = _base(producer, rng)
    _, cache = forward(producer, x, backend, **kw)
    dy = rng.standard_normal(SHAPE)
    snap = Snapshot(x=x, dy=dy, mean=cache.mean, rstd=cache.rstd, **_arrays(None, kw))
    with pytest.raises(TypeError, match=f"{consumer}_backward needs the cache returned by {consumer}_forward"):
        backward(consumer, dy, cache)
    snap.assert_unchanged()

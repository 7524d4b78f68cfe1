"""Every op on every backend against the "numpy" reference backend (the oracle).

Forward output, the saved statistics (``cache.mean``/``cache.rstd``), updated
running statistics and backward gradients are compared for float32 and float64,
odd shapes, channels-last, arbitrary layer-norm axes, absent parameters,
training/eval and empty batches; then float16 and memory layouts.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest

from _helpers import (GRAD_NAMES, OPS, Snapshot, assert_close, backward, copy_kwargs, forward,
                      make_params, plain, rng_for, tol_for)

Case = namedtuple("Case", "op shape kw affine running")
F32, F64 = np.float32, np.float64
BOTH = (F32, F64)

def case(id, op, shape, dtypes=BOTH, affine="wb", running=False, marks=(), **kw):
    return [pytest.param(Case(op, shape, kw, affine, running), np.dtype(dt),
                         id=f"{id}-{np.dtype(dt).name}", marks=marks) for dt in dtypes]


CASES = [
    # batch_norm: training (with and without running stats), eval, N=1, channels-last, 2-D, N=0
    *case("bn-train-3x5x7", "batch_norm", (3, 5, 7), running=True, training=True),
    *case("bn-train-noaffine-3x5x7", "batch_norm", (3, 5, 7), (F32,), affine="", training=True),
    *case("bn-train-2x3x4x5", "batch_norm", (2, 3, 4, 5), running=True, training=True),
    *case("bn-train-weightonly-2x3x4x5", "batch_norm", (2, 3, 4, 5), (F64,), affine="w", training=True),
    *case("bn-eval-2x3x4x5", "batch_norm", (2, 3, 4, 5), running=True, training=False),
    *case("bn-eval-noaffine-3x5x7", "batch_norm", (3, 5, 7), (F32,), affine="", running=True),
    *case("bn-eval-N1-1x4x3", "batch_norm", (1, 4, 3), (F64,), running=True, training=False),
    *case("bn-train-N1-1x4x3", "batch_norm", (1, 4, 3), (F32,), running=True, training=True),
    *case("bn-train-last-2x4x5x3", "batch_norm", (2, 4, 5, 3), running=True, training=True, axis=-1),
    *case("bn-eval-last-2x4x5x3", "batch_norm", (2, 4, 5, 3), (F32,), running=True, axis=-1),
    *case("bn-train-2d-6x5", "batch_norm", (6, 5), (F64,), running=True, training=True),
    *case("bn-train-biasonly-eps-6x5", "batch_norm", (6, 5), (F32,), affine="b", training=True, eps=1e-3),
    *case("bn-eval-N0-0x4x3", "batch_norm", (0, 4, 3), running=True, training=False),
    # layer_norm: last axis, a middle axis, NCHW channel axis, non-contiguous axes, all non-batch axes
    *case("ln-last-3x5x7", "layer_norm", (3, 5, 7), axis=-1),
    *case("ln-last-noaffine-3x5x7", "layer_norm", (3, 5, 7), (F32,), affine="", axis=-1),
    *case("ln-mid-biasonly-3x5x7", "layer_norm", (3, 5, 7), (F64,), affine="b", axis=1),
    *case("ln-C-2x3x4x5", "layer_norm", (2, 3, 4, 5), axis=(1,)),
    *case("ln-13-2x3x4x5", "layer_norm", (2, 3, 4, 5), axis=(1, 3)),
    *case("ln-31neg-2x3x4x5", "layer_norm", (2, 3, 4, 5), (F32,), affine="w", axis=(-1, 1)),
    *case("ln-all-2x3x4x5", "layer_norm", (2, 3, 4, 5), axis=(1, 2, 3)),
    *case("ln-N1-1x4x3", "layer_norm", (1, 4, 3), (F64,), axis=-1, eps=1e-3),
    *case("ln-2d-4x33", "layer_norm", (4, 33), (F32,)),
    *case("ln-N0-0x5x7", "layer_norm", (0, 5, 7), axis=-1),
    # rms_norm
    *case("rms-last-3x5x7", "rms_norm", (3, 5, 7), affine="w"),
    *case("rms-last-noweight-3x5x7", "rms_norm", (3, 5, 7), (F32,), affine=""),
    *case("rms-13-2x3x4x5", "rms_norm", (2, 3, 4, 5), affine="w", axis=(1, 3)),
    *case("rms-all-2x3x4x5", "rms_norm", (2, 3, 4, 5), (F64,), affine="w", axis=(1, 2, 3), eps=1e-6),
    *case("rms-C-2x3x4x5", "rms_norm", (2, 3, 4, 5), (F32,), affine="w", axis=1),
    *case("rms-2d-4x33", "rms_norm", (4, 33), (F32,), affine="w"),
    *case("rms-N0-0x5x7", "rms_norm", (0, 5, 7), (F64,), affine="w"),
    # group_norm: G=1, in between, G=C, 4-D, channels-last, N=1, one channel, N=0
    *case("gn-G1-3x6x7", "group_norm", (3, 6, 7), num_groups=1),
    *case("gn-G3-3x6x7", "group_norm", (3, 6, 7), num_groups=3),
    *case("gn-G6-3x6x7", "group_norm", (3, 6, 7), num_groups=6),
    *case("gn-G2-2x4x3x5", "group_norm", (2, 4, 3, 5), num_groups=2),
    *case("gn-G2-noaffine-2x4x3x5", "group_norm", (2, 4, 3, 5), (F32,), affine="", num_groups=2),
    *case("gn-G2-last-2x3x5x4", "group_norm", (2, 3, 5, 4), num_groups=2, axis=-1),
    # channels-last with several samples: the CPU's one-work-item-per-sample path
    *case("gn-G3-last-5x4x3x6", "group_norm", (5, 4, 3, 6), num_groups=3, axis=-1),
    *case("gn-G2-last-noaffine-4x7x4", "group_norm", (4, 7, 4), (F32,), affine="", num_groups=2, axis=-1),
    *case("gn-G2-N1-1x4x3", "group_norm", (1, 4, 3), (F64,), num_groups=2),
    *case("gn-G1-C1-2x1x5", "group_norm", (2, 1, 5), (F32,), num_groups=1),
    *case("gn-G2-N0-0x4x3", "group_norm", (0, 4, 3), (F64,), num_groups=2),
    # instance_norm: input stats with/without running stats, running stats in use, channels-last
    *case("in-3x5x7", "instance_norm", (3, 5, 7)),
    *case("in-noaffine-3x5x7", "instance_norm", (3, 5, 7), (F32,), affine=""),
    *case("in-running-2x3x4x5", "instance_norm", (2, 3, 4, 5), running=True),
    *case("in-evalstats-2x3x4x5", "instance_norm", (2, 3, 4, 5), running=True, use_input_stats=False),
    *case("in-last-running-2x4x5x3", "instance_norm", (2, 4, 5, 3), running=True, axis=-1),
    *case("in-last-running-5x4x3x6", "instance_norm", (5, 4, 3, 6), running=True, axis=-1),
    *case("in-last-weightonly-4x9x3", "instance_norm", (4, 9, 3), (F64,), affine="w", axis=-1),
    *case("in-evalstats-last-2x4x5x3", "instance_norm", (2, 4, 5, 3), (F32,), running=True,
          use_input_stats=False, axis=-1),
    *case("in-N1-1x4x3", "instance_norm", (1, 4, 3), (F64,)),
    *case("in-N0-0x4x3", "instance_norm", (0, 4, 3), (F32,)),
]


def _inputs(c, dtype, key):
    rng = rng_for(key, c.op, c.shape, dtype.name)
    x = (0.5 + 2.0 * rng.standard_normal(c.shape)).astype(dtype)
    dy = rng.standard_normal(c.shape).astype(dtype)
    kw = make_params(rng, c.op, c.shape, c.kw, c.affine, c.running, dtype)
    return x, dy, kw


def _compare_forward(c, y, cache, y_ref, cache_ref, kw, kw_ref, tol, backend):
    assert cache.backend == backend
    assert cache.op == c.op
    assert y.dtype == y_ref.dtype and y.shape == c.shape
    assert_close(y, y_ref, tol, "y")
    assert_close(cache.mean, cache_ref.mean, tol, "cache.mean")
    assert_close(cache.rstd, cache_ref.rstd, tol, "cache.rstd")
    for name in ("running_mean", "running_var"):
        if name in kw:
            assert_close(kw[name], kw_ref[name], tol, name)


@pytest.mark.parametrize("c, dtype", CASES)
def test_forward_backward_match_reference(backend, c, dtype):
    x, dy, kw = _inputs(c, dtype, "main")
    kw_ref, initial = copy_kwargs(kw), copy_kwargs(kw)
    snap = Snapshot(x=x, dy=dy, weight=kw.get("weight"), bias=kw.get("bias"))
    tol = tol_for(dtype)

    y, cache = forward(c.op, x, backend, **kw)
    y_ref, cache_ref = forward(c.op, x, "numpy", **kw_ref)
    assert y.dtype == dtype
    _compare_forward(c, y, cache, y_ref, cache_ref, kw, kw_ref, tol, backend)
    updating = c.running and kw.get("training", c.op != "batch_norm") and kw.get("use_input_stats", True)
    for name in ("running_mean", "running_var"):
        if c.running:  # updated in place when training, untouched otherwise
            assert np.array_equal(kw[name], initial[name]) != bool(updating), name

    grads = backward(c.op, dy, cache)
    grads_ref = backward(c.op, dy, cache_ref)
    assert len(grads) == len(GRAD_NAMES[c.op]) == len(grads_ref)
    for name, g, g_ref in zip(GRAD_NAMES[c.op], grads, grads_ref):
        if name == "dx":
            assert g.dtype == dtype
        elif g_ref is not None:
            assert g.dtype == kw[name[1:]].dtype and g.shape == kw[name[1:]].shape
        assert_close(g, g_ref, tol, name)
    # absent parameters give None gradients
    assert (grads[1] is None) == ("weight" not in kw)
    if c.op != "rms_norm":
        assert (grads[2] is None) == ("bias" not in kw)
    snap.assert_unchanged()


PLAIN_CASES = [
    Case("batch_norm", (3, 5, 7), {"training": True}, "wb", True),
    Case("batch_norm", (2, 4, 5, 3), {"training": False, "axis": -1}, "wb", True),
    Case("layer_norm", (2, 3, 4, 5), {"axis": (1, 3)}, "wb", False),
    Case("rms_norm", (3, 5, 7), {}, "w", False),
    Case("group_norm", (3, 6, 7), {"num_groups": 3}, "wb", False),
    Case("instance_norm", (2, 3, 4, 5), {}, "wb", True),
]


@pytest.mark.parametrize("c", PLAIN_CASES, ids=lambda c: c.op)
def test_plain_function_equals_forward(backend, c):
    """``OP(x, ...)`` returns exactly the ``y`` of ``OP_forward(x, ...)``."""
    dtype = np.dtype(np.float32)
    x, _, kw = _inputs(c, dtype, "plain")
    kw2 = copy_kwargs(kw)
    y = plain(c.op, x, backend, **kw)
    y_fwd, _ = forward(c.op, x, backend, **kw2)
    assert y.dtype == y_fwd.dtype == dtype
    np.testing.assert_array_equal(y, y_fwd)
    for name in ("running_mean", "running_var"):
        if name in kw:
            np.testing.assert_array_equal(kw[name], kw2[name])


# ----------------------------------------------------------------------------- float16

F16_CASES = [
    Case("batch_norm", (3, 5, 7), {"training": True}, "wb", True),
    Case("batch_norm", (3, 5, 7), {"training": False}, "wb", True),
    Case("layer_norm", (3, 5, 7), {"axis": -1}, "wb", False),
    Case("rms_norm", (3, 5, 7), {}, "w", False),
    Case("group_norm", (3, 6, 7), {"num_groups": 3}, "wb", False),
    Case("instance_norm", (3, 5, 7), {}, "wb", True),
]


@pytest.mark.parametrize("c", F16_CASES, ids=lambda c: f"{c.op}-{'-'.join(map(str, c.kw.values()))}")
def test_float16_in_float16_out(backend, c):
    rng = rng_for("f16", c)
    x = rng.standard_normal(c.shape).astype(np.float16)
    dy = rng.standard_normal(c.shape).astype(np.float16)
    kw = make_params(rng, c.op, c.shape, c.kw, c.affine, c.running, np.float16, running_dtype=np.float32)
    kw_ref, kw64 = copy_kwargs(kw), copy_kwargs(kw)
    for k in ("weight", "bias"):
        if k in kw64:
            kw64[k] = kw64[k].astype(np.float64)

    y, cache = forward(c.op, x, backend, **kw)
    y_ref, cache_ref = forward(c.op, x, "numpy", **kw_ref)
    y64, _ = forward(c.op, x.astype(np.float64), "numpy", **kw64)
    assert y.dtype == np.float16 and y.shape == c.shape
    # statistics are kept in the compute dtype, float32
    assert cache.rstd.dtype == np.float32
    assert_close(y, y_ref, 5e-3, "y vs reference")
    assert_close(y, y64, 5e-3, "y vs float64")
    assert_close(cache.rstd, cache_ref.rstd, 1e-4, "rstd")
    for name in ("running_mean", "running_var"):
        if name in kw:
            assert kw[name].dtype == np.float32
            assert_close(kw[name], kw_ref[name], 1e-4, name)

    grads = backward(c.op, dy, cache)
    grads_ref = backward(c.op, dy, cache_ref)
    for name, g, g_ref in zip(GRAD_NAMES[c.op], grads, grads_ref):
        if g_ref is not None:
            assert g.dtype == np.float16, name
        assert_close(g, g_ref, 1e-2, name)


# ----------------------------------------------------------------------------- layouts

LAYOUT_CASES = [
    Case("batch_norm", (2, 3, 4, 5), {"training": True}, "wb", True),
    Case("batch_norm", (2, 4, 5, 3), {"training": True, "axis": -1}, "wb", True),
    Case("layer_norm", (3, 5, 7), {"axis": -1}, "wb", False),
    Case("layer_norm", (2, 3, 4, 5), {"axis": (1, 3)}, "wb", False),
    Case("rms_norm", (3, 5, 7), {}, "w", False),
    Case("group_norm", (2, 4, 3, 5), {"num_groups": 2}, "wb", False),
    Case("instance_norm", (2, 3, 4, 5), {}, "wb", True),
]


def _strided(a):
    """A view with the values of ``a`` whose first and last axes have stride 2."""
    shape = list(a.shape)
    shape[0] *= 2
    if a.ndim > 1:
        shape[-1] *= 2
    base = np.full(shape, np.nan, dtype=a.dtype)
    view = base[::2, ..., ::2] if a.ndim > 1 else base[::2]
    view[...] = a
    return view


def _reversed(a):
    """A view with the values of ``a`` and negative strides on the last axis."""
    return np.ascontiguousarray(a[..., ::-1])[..., ::-1]


def _readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


LAYOUTS = {"strided": _strided, "reversed": _reversed, "fortran": np.asfortranarray, "readonly": _readonly}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("c", LAYOUT_CASES, ids=lambda c: f"{c.op}-{len(c.shape)}d-{c.kw.get('axis', 'def')}")
def test_layouts_give_same_results(backend, c, layout):
    """Non-contiguous, reversed, Fortran-ordered and read-only x, dy, weight and bias."""
    make = LAYOUTS[layout]
    x, dy, kw = _inputs(c, np.dtype(np.float32), "layout")
    kw_c = copy_kwargs(kw)
    kw_l = copy_kwargs(kw)
    for k in ("weight", "bias"):
        if k in kw_l:
            kw_l[k] = make(kw_l[k])
    if layout == "strided" and c.running:  # running stats updated in place through a strided view
        for k in ("running_mean", "running_var"):
            kw_l[k] = _strided(kw_l[k])
    xl, dyl = make(x), make(dy)
    if layout in ("strided", "reversed") or (layout == "fortran" and x.ndim > 1):
        assert not xl.flags.c_contiguous
    snap = Snapshot(x=xl, dy=dyl, weight=kw_l.get("weight"), bias=kw_l.get("bias"))

    y_c, cache_c = forward(c.op, x, backend, **kw_c)
    y_l, cache_l = forward(c.op, xl, backend, **kw_l)
    tol = 1e-5
    assert_close(y_l, y_c, tol, "y")
    assert_close(cache_l.rstd, cache_c.rstd, tol, "rstd")
    for k in ("running_mean", "running_var"):
        if k in kw_c:
            assert_close(kw_l[k], kw_c[k], tol, k)
    g_c = backward(c.op, dy, cache_c)
    g_l = backward(c.op, dyl, cache_l)
    for name, a, b in zip(GRAD_NAMES[c.op], g_l, g_c):
        assert_close(a, b, tol, name)
    snap.assert_unchanged()
    # and the contiguous result is itself right
    y_ref, _ = forward(c.op, x, "numpy", **copy_kwargs(kw))
    assert_close(y_c, y_ref, tol_for(np.float32), "y vs reference")


def test_every_op_is_covered():
    """Guard: the case tables above name every op."""
    assert {p.values[0].op for p in CASES} == set(OPS)
    assert {c.op for c in LAYOUT_CASES} == set(OPS)
    assert {c.op for c in F16_CASES} == set(OPS)
    assert {c.op for c in PLAIN_CASES} == set(OPS)

"""Shapes that steer the CPU row kernels down each of their paths, against the reference.

Backward sums per-element dweight/dbias two rows at a time when the rows share
their weights (layer/RMS norm), row by row otherwise (group norm on (N, C) input:
one weight per element, but a different group of weights per row), and leaves an
odd last row of a block on its own.
"""
import numpy as np
import pytest

import numbanorm as nbn

CASES = [
    ("group_norm", (7, 8), (4,), {}),              # seg 1, period 4: row by row
    ("layer_norm", (5, 9), (), {}),                # an odd row count: pairs and a single
    ("layer_norm", (301, 7, 5), (), {"axis": (1, 2)}),
    ("layer_norm", (4097, 33), (), {}),            # parallel path, odd rows per block
    ("rms_norm", (5, 9), (), {}),
]


@pytest.mark.parametrize("op, shape, args, kw", CASES, ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}" for c in CASES])
def test_row_paths_match_reference(op, shape, args, kw):
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    wshape = (shape[1],) if op == "group_norm" else tuple(shape[a] for a in kw.get("axis", (len(shape) - 1,)))
    params = {"weight": rng.standard_normal(wshape)}
    if op != "rms_norm":
        params["bias"] = rng.standard_normal(wshape)
    forward, backward = getattr(nbn, op + "_forward"), getattr(nbn, op + "_backward")
    got = backward(dy, forward(x, *args, backend="cpu", **params, **kw)[1])
    want = backward(dy, forward(x, *args, backend="numpy", **params, **kw)[1])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10 * max(1.0, float(np.abs(w).max())))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op, shape, args, kw", CASES[:2] + CASES[-1:] + [("instance_norm", (3, 4, 5), (), {})],
                         ids=lambda c: str(c))
def test_small_backward_is_one_call_with_the_same_bits(op, shape, args, kw, dtype, monkeypatch):
    """Below SERIAL_BELOW elements a row backward allocates its outputs and scratch in the
    compiled call that runs the serial kernel: the same bits as allocating them from Python."""
    from numbanorm.cpu import rowwise
    rng = np.random.default_rng(8)
    x, dy = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    channels = shape[-1] if op in ("layer_norm", "rms_norm") else shape[1]
    params = {"weight": rng.standard_normal(channels).astype(dtype)}
    forward, backward = getattr(nbn, op + "_forward"), getattr(nbn, op + "_backward")
    cache = forward(x, *args, backend="cpu", **params, **kw)[1]
    calls = []
    small = rowwise._small_backward
    monkeypatch.setattr(rowwise, "_small_backward", lambda *a: calls.append(1) or small(*a))
    one_call = backward(dy, cache)
    assert calls == [1]
    monkeypatch.setattr(rowwise, "SERIAL_BELOW", 0)
    from_python = backward(dy, cache)
    assert calls == [1]
    for a, b in zip(one_call, from_python):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op, args", [("instance_norm", ()), ("group_norm", (2,))])
def test_channels_last_chunks_match_reference(op, args, monkeypatch):
    """Channels-last instance/group norm go through the batch a chunk of samples at a time
    (the chunk still in cache for its second pass): one sample per chunk gives the same."""
    from numbanorm.cpu import channelwise
    rng = np.random.default_rng(8)
    shape = (5, 6, 7, 4)
    x, dy = rng.standard_normal(shape) * 3 + 10, rng.standard_normal(shape)
    params = {"weight": rng.standard_normal(4), "bias": rng.standard_normal(4), "axis": -1}
    forward, backward = getattr(nbn, op + "_forward"), getattr(nbn, op + "_backward")
    whole = forward(x, *args, backend="cpu", **params)
    whole_grads = backward(dy, whole[1])
    monkeypatch.setattr(channelwise, "CHUNK_BYTES", 1)
    assert len(channelwise.cache_chunks(x.reshape(5, 42, 4, 1), arrays=2)) == 5
    y, cache = forward(x, *args, backend="cpu", **params)
    grads = backward(dy, cache)
    y_ref, cache_ref = forward(x, *args, backend="numpy", **params)
    np.testing.assert_array_equal(y, whole[0])
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    for name in ("mean", "rstd"):
        np.testing.assert_allclose(getattr(cache, name), getattr(cache_ref, name), rtol=1e-12)
    for g, g_whole, g_ref in zip(grads, whole_grads, backward(dy, cache_ref)):
        np.testing.assert_allclose(g, g_whole, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-10)


STREAM_CASES = [
    ("layer_norm", (67, 131), (), {}),                 # rows not 64-byte aligned: head, body, tail
    ("rms_norm", (4097, 33), (), {}),                  # parallel
    ("group_norm", (6, 4, 5, 7), (2,), {}),            # a weight per segment of a row
    ("instance_norm", (3, 5, 9, 13), (), {}),
    ("instance_norm", (2, 3, 2, 5), (), {}),            # rows of 10: no aligned body
    ("batch_norm", (4, 37, 29, 6), (), {"training": True, "axis": -1}),   # channels-last rows of 6 lanes
    ("batch_norm", (64, 40, 23), (), {"training": True, "axis": -1}),     # parallel, channels-last
    ("instance_norm", (5, 9, 7, 19), (), {"axis": -1}),                   # one work item per sample
    ("group_norm", (4, 6, 5, 24), (3,), {"axis": -1}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op, shape, args, kw", STREAM_CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}" for c in STREAM_CASES])
def test_streamed_outputs_match_plain(op, shape, args, kw, dtype, monkeypatch):
    """Forward outputs larger than the cache are computed into a buffer and written with
    streaming stores (cpu/_stream.py): the same values, bit for bit, as plain stores."""
    from numbanorm.cpu import _stream, channelwise
    monkeypatch.setattr(channelwise, "SMALL_BELOW", 0)  # batch norm's item kernels (they stream), not one call
    rng = np.random.default_rng(9)
    x, dy = (rng.standard_normal(shape) * 2 + 5).astype(dtype), rng.standard_normal(shape).astype(dtype)
    channels = shape[-1] if kw.get("axis") == -1 else shape[1]
    params = {} if op in ("layer_norm", "rms_norm") else {"weight": rng.standard_normal(channels).astype(dtype)}
    forward, backward = getattr(nbn, op + "_forward"), getattr(nbn, op + "_backward")

    def run():
        y, cache = forward(x, *args, backend="cpu", **params, **kw)
        return [np.array(a) for a in (y, *backward(dy, cache))]

    plain = run()
    monkeypatch.setattr(_stream, "STREAM_FROM_BYTES", 0)
    assert _stream.streams(x)
    streamed = run()
    for p, s in zip(plain, streamed):
        np.testing.assert_array_equal(s, p)
    y_ref = forward(x.astype(np.float64), *args, backend="numpy", **{k: v.astype(np.float64) for k, v in params.items()},
                    **kw)[0]
    np.testing.assert_allclose(streamed[0], y_ref, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, zero", [((67, 131), False), ((4097, 9), False), ((300, 130), True)],
                         ids=["ragged", "parallel", "zero-weight"])
def test_spectral_norm_streamed_matches_plain(shape, zero, dtype, monkeypatch):
    """spectral_norm's ``w / sigma`` (and the backward's ``dy / eps`` when sigma is clamped, a
    zero weight) is written in blocks through a buffer with streaming stores when larger than
    the cache: the same values, bit for bit, as plain stores, and the reference's."""
    from numbanorm.cpu import _stream
    rng = np.random.default_rng(4)
    w = np.zeros(shape, dtype) if zero else rng.standard_normal(shape).astype(dtype)
    u0, dy = rng.standard_normal(shape[0]).astype(dtype), rng.standard_normal(shape).astype(dtype)

    def run(backend="cpu", cast=dtype):
        y, cache = nbn.spectral_norm_forward(w.astype(cast), u0.astype(cast), axis=0, backend=backend)
        return [np.array(a) for a in (y, *nbn.spectral_norm_backward(dy.astype(cast), cache))]

    plain = run()
    monkeypatch.setattr(_stream, "STREAM_FROM_BYTES", 0)
    streamed = run()
    for p, s in zip(plain, streamed):
        np.testing.assert_array_equal(s, p)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for s, r in zip(streamed, run("numpy", np.float64)):
        np.testing.assert_allclose(s, r, rtol=tol, atol=tol * np.abs(r).max())

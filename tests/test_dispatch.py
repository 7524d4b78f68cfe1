"""Backend choice: precedence, the per-thread context, names, imports, and the cache object.

Precedence: ``backend=`` > ``with numbanorm.backend(...)`` > ``set_backend`` >
env ``NUMBANORM_BACKEND`` > inference from the arrays (NumPy arrays: "cpu").
``cache.backend`` tells which backend ran.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import numbanorm as nbn
from _helpers import GRAD_NAMES, OPS, Snapshot, backward, forward, make_params, rng_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    """No env override, no global backend; both restored whatever the test does."""
    monkeypatch.delenv("NUMBANORM_BACKEND", raising=False)
    nbn.set_backend(None)
    try:
        yield
    finally:
        nbn.set_backend(None)


def _x():
    return rng_for("dispatch").standard_normal((3, 4, 5))


def _base_kw(op):
    return {"group_norm": dict(num_groups=2), "batch_norm": dict(training=True)}.get(op, {})


def _ran_on(explicit=None):
    _, cache = nbn.layer_norm_forward(_x(), backend=explicit)
    return cache.backend


# (explicit, context, global, env, expected)
PRECEDENCE = [
    (None, None, None, None, "cpu"),            # inference: NumPy arrays go to the CPU kernels
    (None, None, None, "numpy", "numpy"),       # env beats inference
    (None, None, "numpy", "cpu", "numpy"),      # set_backend beats env
    (None, None, "cpu", "numpy", "cpu"),
    (None, "numpy", "cpu", "cpu", "numpy"),     # context beats set_backend and env
    (None, "cpu", "numpy", "numpy", "cpu"),
    ("numpy", "cpu", "cpu", "cpu", "numpy"),    # backend= beats everything
    ("cpu", "numpy", "numpy", "numpy", "cpu"),
]


@pytest.mark.parametrize("explicit, context, global_, env, expected", PRECEDENCE,
                         ids=[f"arg={p[0]}-ctx={p[1]}-set={p[2]}-env={p[3]}" for p in PRECEDENCE])
def test_precedence(monkeypatch, explicit, context, global_, env, expected):
    if env is not None:
        monkeypatch.setenv("NUMBANORM_BACKEND", env)
    nbn.set_backend(global_)
    with (nbn.backend(context) if context else contextlib.nullcontext()):
        assert _ran_on(explicit) == expected
        # get_backend reports the forced backend (None when it would be inferred)
        assert nbn.get_backend() == (context or global_ or env)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", ["numpy", "cpu"])
def test_context_selects_backend_for_every_op_forward_and_backward(op, name):
    rng = rng_for("ctx", op)
    x = rng.standard_normal((3, 4, 5))
    kw = make_params(rng, op, x.shape, _base_kw(op), "wb")
    with nbn.backend(name):
        y, cache = forward(op, x, **kw)
        grads = backward(op, np.ones_like(y), cache)
    assert cache.backend == name
    assert len(grads) == len(GRAD_NAMES[op])


def test_context_nests_and_restores_on_exception():
    assert nbn.get_backend() is None
    with nbn.backend("numpy"):
        with nbn.backend("cpu"):
            assert nbn.get_backend() == "cpu"
        assert nbn.get_backend() == "numpy"
        with pytest.raises(KeyError):
            with nbn.backend("cpu"):
                raise KeyError("boom")
        assert nbn.get_backend() == "numpy"
        assert _ran_on() == "numpy"
    assert nbn.get_backend() is None


def test_context_is_not_seen_by_a_thread_started_inside_it():
    seen = {}

    def worker():
        seen["get_backend"] = nbn.get_backend()
        seen["ran_on"] = _ran_on()

    with nbn.backend("numpy"):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert _ran_on() == "numpy"
    assert seen == {"get_backend": None, "ran_on": "cpu"}


def test_context_in_one_thread_does_not_leak_into_another():
    entered, release = threading.Event(), threading.Event()
    seen = {}

    def worker():
        with nbn.backend("numpy"):
            entered.set()
            release.wait(10)
            seen["inside"] = _ran_on()

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert entered.wait(10)
        assert nbn.get_backend() is None
        assert _ran_on() == "cpu"
    finally:
        release.set()
        t.join()
    assert seen["inside"] == "numpy"


def test_set_backend_is_process_wide():
    nbn.set_backend("numpy")
    seen = {}
    t = threading.Thread(target=lambda: seen.setdefault("ran_on", _ran_on()))
    t.start()
    t.join()
    assert seen["ran_on"] == "numpy"
    nbn.set_backend(None)
    assert nbn.get_backend() is None and _ran_on() == "cpu"


@pytest.mark.parametrize("bad", ["gpu", "CPU", "", "numba"])
def test_unknown_backend_names_raise_value_error(monkeypatch, bad):
    with pytest.raises(ValueError, match="unknown backend"):
        nbn.layer_norm(_x(), backend=bad or "none")
    with pytest.raises(ValueError, match="unknown backend"):
        with nbn.backend(bad):
            pass
    nbn.set_backend("numpy")
    with pytest.raises(ValueError, match="unknown backend"):
        nbn.set_backend(bad)
    assert nbn.get_backend() == "numpy"  # a failed set_backend changes nothing
    nbn.set_backend(None)
    if bad:  # an empty variable means "not set"
        monkeypatch.setenv("NUMBANORM_BACKEND", bad)
        with pytest.raises(ValueError, match="NUMBANORM_BACKEND"):
            nbn.layer_norm(_x())


def test_unknown_backend_writes_nothing():
    rng = rng_for("bad-backend")
    x = rng.standard_normal((3, 4, 5))
    rm, rv, nbt = np.zeros(4), np.ones(4), np.zeros(1, np.int64)
    snap = Snapshot(x=x, rm=rm, rv=rv, nbt=nbt)
    with pytest.raises(ValueError):
        nbn.batch_norm(x, running_mean=rm, running_var=rv, num_batches_tracked=nbt, training=True,
                       backend="tpu")
    snap.assert_unchanged()


def test_available_backends():
    names = nbn.available_backends()
    assert isinstance(names, list)
    assert "numpy" in names and "cpu" in names
    assert set(names) <= {"numpy", "cpu", "cuda"}
    assert len(set(names)) == len(names)


def _run_python(code):
    env = dict(os.environ)
    env.pop("NUMBANORM_BACKEND", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_import_does_not_import_numba():
    proc = _run_python("import numbanorm, sys; "
                       "assert 'numba.cuda' not in sys.modules, 'numba.cuda imported'; "
                       "assert 'numba' not in sys.modules, 'numba imported'")
    assert proc.returncode == 0, proc.stderr


def test_cpu_backend_works_without_numba_cuda():
    """numba.cuda made unimportable: the CPU path still works and never tries to import it."""
    proc = _run_python(
        "import sys; sys.modules['numba.cuda'] = None\n"
        "import numpy as np, numbanorm as nbn\n"
        "x = np.arange(24.0).reshape(2, 3, 4)\n"
        "y, c = nbn.layer_norm_forward(x, backend='cpu')\n"
        "assert c.backend == 'cpu'\n"
        "nbn.layer_norm_backward(np.ones_like(y), c)\n"
        "assert 'cpu' in nbn.available_backends() and 'cuda' not in nbn.available_backends()\n")
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- the cache

@pytest.mark.parametrize("op", OPS)
def test_cache_is_immutable(backend, op):
    rng = rng_for("cache", op)
    x = rng.standard_normal((3, 4, 5))
    kw = make_params(rng, op, x.shape, _base_kw(op), "wb")
    _, cache = forward(op, x, backend, **kw)
    for attr in ("op", "backend", "mean", "rstd", "params", "saved", "something_new"):
        with pytest.raises(AttributeError):
            setattr(cache, attr, None)
    with pytest.raises(TypeError):
        cache.params["eps"] = 1.0
    with pytest.raises(TypeError):
        cache.saved["anything"] = 1.0
    assert cache.op == op and cache.backend == backend


def test_cache_attributes_cannot_be_deleted(backend):
    _, cache = nbn.layer_norm_forward(_x(), backend=backend)
    with pytest.raises(AttributeError):
        del cache.mean
    assert cache.mean is not None


@pytest.mark.parametrize("op", OPS)
def test_backward_does_not_mutate_the_cache(backend, op):
    rng = rng_for("cache-mut", op)
    shape = (3, 4, 5)
    x = rng.standard_normal(shape)
    kw = make_params(rng, op, shape, _base_kw(op), "wb", op in ("batch_norm", "instance_norm"))
    _, cache = forward(op, x, backend, **kw)
    arrays = {"mean": cache.mean, "rstd": cache.rstd, "x": x}
    arrays.update({f"params_{k}": v for k, v in cache.params.items() if isinstance(v, np.ndarray)})
    arrays.update({f"saved_{k}": v for k, v in cache.saved.items() if isinstance(v, np.ndarray)})
    snap = Snapshot(**arrays)
    dy = rng.standard_normal(shape)
    first = backward(op, dy, cache)
    snap.assert_unchanged()
    second = backward(op, dy, cache)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    snap.assert_unchanged()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("op", OPS)
def test_cache_statistics_are_copies_in_the_compute_dtype(backend, op, dtype):
    """``cache.mean`` / ``cache.rstd`` come in the compute dtype, the same array on each access,
    and overwriting them leaves the backward as it was (the cache made them on first access)."""
    rng = rng_for("cache-stats", op)
    shape = (3, 4, 5)
    x = rng.standard_normal(shape).astype(dtype)
    kw = make_params(rng, op, shape, _base_kw(op), "wb", dtype=dtype)
    _, cache = forward(op, x, backend, **kw)
    _, fresh = forward(op, x, backend, **kw)
    compute = np.float32 if dtype == np.float16 else dtype
    for name in ("mean", "rstd"):
        stat = getattr(cache, name)
        if stat is None:  # RMS norm has no mean
            assert op == "rms_norm" and name == "mean"
            continue
        assert stat.dtype == compute and stat is getattr(cache, name)
        np.testing.assert_array_equal(stat, getattr(fresh, name))
        stat[...] = 7.0
    dy = rng.standard_normal(shape).astype(dtype)
    for got, expected in zip(backward(op, dy, cache), backward(op, dy, fresh)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("forward_on, context", [("numpy", "cpu"), ("cpu", "numpy")])
def test_backward_runs_on_the_backend_of_its_cache(forward_on, context):
    """A cache holds backend-private arrays, so its backward must not be re-routed by a context."""
    rng = rng_for("cache-backend")
    x = rng.standard_normal((3, 4, 5))
    dy = rng.standard_normal(x.shape)
    _, cache = nbn.layer_norm_forward(x, backend=forward_on)
    expected = nbn.layer_norm_backward(dy, cache)
    with nbn.backend(context):
        got = nbn.layer_norm_backward(dy, cache)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-12, atol=1e-12)


def test_backward_refuses_another_backend_than_its_cache():
    x = np.random.default_rng(0).standard_normal((3, 4, 5))
    _, cache = nbn.layer_norm_forward(x, backend="numpy")
    with pytest.raises(ValueError, match="made by the 'numpy' backend"):
        nbn.layer_norm_backward(x, cache, backend="cpu")

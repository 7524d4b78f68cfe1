"""SyncBatchNorm over MPI (numbanorm.distributed).

The multi-process checks live in ``tests/mpi/sync_checks.py``, launched here
with ``mpiexec -n 2`` and ``-n 3`` (every backend, both layouts, uneven shards
with an empty one, a training loop, the errors): each launch pays Python and
Numba's start once for all of them. The cheap checks run in this process, on a
single-rank communicator. Skipped without mpi4py (``pip install '.[mpi]'``).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import numbanorm as nbn

MPI = pytest.importorskip("mpi4py.MPI", reason="SyncBatchNorm needs mpi4py (pip install '.[mpi]')")

from numbanorm.distributed import sync_batch_norm, sync_batch_norm_backward, sync_batch_norm_forward  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "mpi" / "sync_checks.py"
TIMEOUT = 120


def _mpiexec():
    """The mpiexec of the MPI that mpi4py uses: the MPICH wheel puts it next to the interpreter."""
    for folder in (pathlib.Path(sys.executable).parent, pathlib.Path(sysconfig.get_path("scripts"))):
        if (folder / "mpiexec").exists():
            return str(folder / "mpiexec")
    return shutil.which("mpiexec")


def run_mpi(n, *args, timeout=TIMEOUT):
    """Run ``mpiexec -n n python *args`` from the repository; ``(returncode, output)``.

    One process group, killed whole on timeout, so no rank outlives a hung job.
    """
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec (pip install '.[mpi]' brings MPICH's)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               NUMBA_NUM_THREADS="1")  # ranks share the cores
    proc = subprocess.Popen([mpiexec, "-n", str(n), sys.executable, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"mpiexec -n {n} {' '.join(map(str, args))} hung for {timeout} s; its output:\n{out}")
    return proc.returncode, out


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_together_compute_batch_norm_of_the_whole_batch(ranks):
    """Forward, backward, running statistics, a training loop and the errors, on every rank."""
    code, out = run_mpi(ranks, str(WORKER))
    assert code == 0 and f"checks passed on {ranks} ranks" in out, f"mpiexec -n {ranks} failed:\n{out}"


def test_example_trains_data_parallel():
    """examples/train_data_parallel.py, which README shows, runs under mpiexec -n 2."""
    code, out = run_mpi(2, str(ROOT / "examples" / "train_data_parallel.py"))
    assert code == 0 and "parameters identical on every rank: True" in out, f"the example failed:\n{out}"


# ----------------------------------------------------------------------------- one rank, in process

def _data(shape, axis, dtype, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[axis]
    offset = 4.0 if dtype == np.float16 else 1e3  # large-mean data, where float16 can hold it
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    params = dict(weight=rng.standard_normal(C).astype(dtype), bias=rng.standard_normal(C).astype(dtype),
                  running_mean=rng.standard_normal(C).astype(dtype),
                  running_var=rng.uniform(0.5, 2, C).astype(dtype))
    return x, dy, params


def _run(forward, backward, x, dy, params, **kw):
    params = {k: v.copy() for k, v in params.items()}
    y, cache = forward(x, **params, **kw)
    return (y, *backward(dy, cache), params["running_mean"], params["running_var"], cache.mean, cache.rstd)


@pytest.mark.parametrize("shape,axis", [((4, 3, 5), 1), ((3, 2, 2, 5), -1), ((6, 4), 1)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("comm", [None, "self"])
def test_one_rank_is_batch_norm(backend, shape, axis, dtype, comm):
    comm = MPI.COMM_SELF if comm == "self" else comm
    x, dy, params = _data(shape, axis, dtype)
    kw = dict(training=True, axis=axis, backend=backend)
    got = _run(sync_batch_norm_forward, sync_batch_norm_backward, x, dy, params, comm=comm, **kw)
    want = _run(nbn.batch_norm_forward, nbn.batch_norm_backward, x, dy, params, **kw)
    tol = {np.float64: 1e-9, np.float32: 1e-4, np.float16: 1e-2}[dtype]
    for a, b in zip(got, want):
        a, b = (t.copy_to_host() if hasattr(t, "copy_to_host") else t for t in (a, b))
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=tol, atol=tol)


def test_eval_is_batch_norm_with_running_statistics(backend):
    x, dy, params = _data((4, 3, 5), 1, np.float32)
    got = _run(sync_batch_norm_forward, sync_batch_norm_backward, x, dy, params, backend=backend)
    want = _run(nbn.batch_norm_forward, nbn.batch_norm_backward, x, dy, params, backend=backend)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(*(t.copy_to_host() if hasattr(t, "copy_to_host") else t for t in (a, b)))
    assert np.array_equal(sync_batch_norm(x, backend=backend, **params), got[0])


def test_momentum_none_counts_batches():
    x, _, params = _data((5, 3), 1, np.float64)
    counter = np.array([0], np.int64)
    for _ in range(2):
        sync_batch_norm(x, training=True, momentum=None, num_batches_tracked=counter, **params)
    assert counter[0] == 2
    np.testing.assert_allclose(params["running_mean"], x.mean(axis=0))  # factors 1, then 1/2 of the same mean


def test_errors():
    x, dy, params = _data((4, 3), 1, np.float64)
    saved = {k: v.copy() for k, v in params.items()}
    with pytest.raises(TypeError, match="intracommunicator"):
        sync_batch_norm(x, training=True, comm=object(), **params)
    with pytest.raises(TypeError, match="COMM_NULL"):
        sync_batch_norm(x, training=True, comm=MPI.COMM_NULL, **params)
    with pytest.raises(TypeError, match="intracommunicator"):  # checked in eval too
        sync_batch_norm(x, comm=[MPI.COMM_WORLD], **params)
    with pytest.raises(ValueError, match="more than 1 value per channel.*got 1 in all over 1 rank"):
        sync_batch_norm(x[:1], training=True, **params)
    with pytest.raises(ValueError, match="weight has shape"):
        sync_batch_norm(x, training=True, **dict(params, weight=np.ones(4)))
    with pytest.raises(TypeError, match="dtype int64"):
        sync_batch_norm(x.astype(np.int64), training=True, **params)
    for k, v in params.items():
        np.testing.assert_array_equal(v, saved[k])
    _, cache = nbn.batch_norm_forward(x, training=True)
    with pytest.raises(TypeError, match="needs the cache returned by sync_batch_norm_forward"):
        sync_batch_norm_backward(dy, cache)
    _, cache = sync_batch_norm_forward(x, training=True, **params)
    with pytest.raises(ValueError, match="dy has shape"):
        sync_batch_norm_backward(dy[:2], cache)
    first = sync_batch_norm_backward(dy, cache)
    for a, b in zip(first, sync_batch_norm_backward(dy, cache)):  # the cache is reusable
        np.testing.assert_array_equal(a, b)


def test_import_numbanorm_does_not_import_mpi4py():
    code = ("import sys, numpy as np, numbanorm, numbanorm.distributed as d\n"
            "x = np.ones((2, 3)); d.sync_batch_norm(x, running_mean=np.zeros(3), running_var=np.ones(3))\n"
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=TIMEOUT)


# ----------------------------------------------------------------------------- the layer

def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a


@pytest.mark.parametrize("axis", [1, -1])
def test_sync_layer_on_one_rank_is_batch_norm_layer(backend, axis):
    rng = np.random.default_rng(3)
    x = (5.0 + rng.standard_normal((4, 3, 2, 3) if axis == 1 else (4, 2, 3, 3))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    plain = nbn.layers.BatchNorm(3, axis=axis, momentum=None, backend=backend)
    sync = nbn.layers.SyncBatchNorm(3, axis=axis, momentum=None, backend=backend, comm=MPI.COMM_SELF)
    for layer in (plain, sync):
        layer.load_state_dict({"weight": np.arange(1.0, 4.0), "bias": np.ones(3)}, strict=False)
    for training in (True, True, False):
        plain.train(training), sync.train(training)
        got = _host(sync(x)), _host(sync.backward(dy))
        want = _host(plain(x)), _host(plain.backward(dy))
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for key, value in plain.state_dict().items():
        np.testing.assert_allclose(sync.state_dict()[key], value, rtol=1e-6)
    for key, g in plain.grads.items():
        np.testing.assert_allclose(_host(sync.grads[key]), _host(g), rtol=1e-5, atol=1e-5)


def test_convert_sync_batchnorm_shares_the_arrays():
    L = nbn.layers
    bn = L.BatchNorm2d(4, eps=1e-3, momentum=0.2, axis=-1, dtype=np.float64).eval()
    bn.buffers["running_mean"][:] = 7.0
    renorm, norm, already = L.BatchRenorm2d(4), L.LayerNorm(4), L.SyncBatchNorm(4)
    model = [bn, (norm, renorm), {"a": already, "b": [bn]}]
    converted = L.SyncBatchNorm.convert_sync_batchnorm(model, comm=MPI.COMM_SELF)
    assert model[0] is bn and model[2]["b"][0] is bn, "the containers given are left alone"
    sync = converted[0]
    assert type(sync) is L.SyncBatchNorm and sync.comm is MPI.COMM_SELF
    assert type(converted[1]) is tuple and converted[1][0] is norm and converted[1][1] is renorm
    assert converted[2]["a"] is already and type(converted[2]["b"][0]) is L.SyncBatchNorm
    assert (sync.num_features, sync.eps, sync.momentum, sync.axis, sync.dtype, sync.training) == (
        4, 1e-3, 0.2, -1, np.float64, False)
    for mine, theirs in ((sync.params, bn.params), (sync.grads, bn.grads), (sync.buffers, bn.buffers)):
        assert mine.keys() == theirs.keys() and all(mine[k] is theirs[k] for k in mine)
    assert L.SyncBatchNorm.convert_sync_batchnorm(bn) is not bn
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 4))
    np.testing.assert_array_equal(sync(x), bn(x))  # eval: the same running statistics


def test_sync_layer_comm_is_checked():
    with pytest.raises(TypeError, match="intracommunicator"):
        nbn.layers.SyncBatchNorm(3, comm="world")
    with pytest.raises(TypeError, match="intracommunicator"):
        nbn.layers.SyncBatchNorm.convert_sync_batchnorm(nbn.layers.BatchNorm1d(3), comm=1)

"""numbanorm.distributed checked on every rank of an MPI job (launched by tests/test_distributed.py).

    mpiexec -n 3 python tests/mpi/sync_checks.py

Each rank takes its shard (uneven, one of them empty) of a batch that every rank
builds from the same seed, and compares what it gets with batch_norm on the
whole batch (numpy backend, float64): its slice of y and dx, the sums over the
ranks of dweight and dbias, the running statistics; and checks that the
statistics are bitwise the same on every rank. Then a few steps of training a
linear layer + SyncBatchNorm, and the errors, each raised on every rank.

A failed check prints its traceback and aborts the whole job (``MPI.Abort``),
so no rank is left waiting in a collective. Rank 0 ends with
``sync_checks: N checks passed on R ranks``.
"""
import sys
import traceback

import numpy as np
from mpi4py import MPI

import numbanorm as nbn
from numbanorm._dispatch import get_impl
from numbanorm.distributed import sync_batch_norm, sync_batch_norm_backward, sync_batch_norm_forward

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
BACKENDS = [b for b in ("numpy", "cpu", "cuda") if b in nbn.available_backends()]
# Per-rank sample counts: uneven, with an empty shard; the second set ends with a rank of one sample.
SHARDS = {1: [(5,), (3,)], 2: [(3, 0), (1, 4)], 3: [(5, 0, 2), (0, 2, 1)], 4: [(2, 0, 3, 1), (1, 1, 0, 2)]}[size]
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 2e-5}
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a


def close(got, want, dtype, what):
    got, want = np.asarray(host(got), np.float64), np.asarray(want, np.float64)
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max(initial=0))),
                               err_msg=f"rank {rank}: {what}")


def same_on_every_rank(a, what):
    a = np.ascontiguousarray(host(a))
    everyone = comm.allgather(a.tobytes())
    assert all(b == everyone[0] for b in everyone), f"rank {rank}: {what} differs between ranks"


def my_slice(shards):
    start = sum(shards[:rank])
    return slice(start, start + shards[rank])


def raises(exc_type, fn, *match):
    """``fn()`` raises ``exc_type`` with every string of ``match`` in its message (on this rank)."""
    try:
        fn()
    except exc_type as exc:
        for m in match:
            assert m in str(exc), f"rank {rank}: {m!r} not in {exc!r}"
        return exc
    raise AssertionError(f"rank {rank}: {fn} did not raise {exc_type.__name__}")


# ----------------------------------------------------------------------------- against batch_norm

def compare(backend, axis, shards, dtype, momentum=0.1, device=False, affine=True):
    C = 3
    total = sum(shards)
    shape = (total, C, 2, 3) if axis == 1 else (total, 2, 3, C)
    rng = np.random.default_rng(1234)  # the same batch on every rank
    x = (3.0 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    rm0, rv0 = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    counter = np.array([3], np.int64) if momentum is None else None

    ref_rm, ref_rv = rm0.copy(), rv0.copy()
    ref_counter = None if counter is None else counter.copy()
    y_ref, cache_ref = nbn.batch_norm_forward(x, weight=w, bias=b, running_mean=ref_rm, running_var=ref_rv,
                                              training=True, momentum=momentum, axis=axis,
                                              num_batches_tracked=ref_counter, backend="numpy")
    dx_ref, dw_ref, db_ref = nbn.batch_norm_backward(dy, cache_ref)

    mine = my_slice(shards)
    args = [np.ascontiguousarray(x[mine]), np.ascontiguousarray(dy[mine]), w, b, rm0.copy(), rv0.copy()]
    if device:
        from numba import cuda
        args = [None if a is None else cuda.to_device(a) for a in args]
    xs, dys, ws, bs, rm, rv = args
    y, cache = sync_batch_norm_forward(xs, weight=ws, bias=bs, running_mean=rm, running_var=rv, training=True,
                                       momentum=momentum, axis=axis, num_batches_tracked=counter, backend=backend)
    dx, dw, db = sync_batch_norm_backward(dys, cache)
    assert cache.backend == backend and cache.op == "sync_batch_norm"
    if device:
        assert all(hasattr(a, "copy_to_host") for a in (y, dx, rm) + ((dw, db) if affine else ())), "device out"
    assert host(y).dtype == np.dtype(dtype) and host(dx).dtype == np.dtype(dtype)
    close(y, y_ref[mine], dtype, "y")
    close(dx, dx_ref[mine], dtype, "dx")
    close(rm, ref_rm, dtype, "running_mean")
    close(rv, ref_rv, dtype, "running_var")
    close(cache.mean, cache_ref.mean, dtype, "cache.mean")
    close(cache.rstd, cache_ref.rstd, dtype, "cache.rstd")
    for a, what in ((rm, "running_mean"), (rv, "running_var"), (cache.mean, "mean"), (cache.rstd, "rstd")):
        same_on_every_rank(a, what)
    if affine:
        close(comm.allreduce(host(dw).astype(np.float64)), dw_ref, dtype, "sum of dweight over ranks")
        close(comm.allreduce(host(db).astype(np.float64)), db_ref, dtype, "sum of dbias over ranks")
    else:
        assert dw is None and db is None
    if counter is not None:
        assert counter[0] == ref_counter[0] == 4


@check
def matches_batch_norm_on_the_whole_batch():
    for backend in BACKENDS:
        dtype = np.float32 if backend == "cuda" else np.float64
        for i, axis in enumerate((1, -1)):
            compare(backend, axis, SHARDS[i], dtype)
        compare(backend, 1, SHARDS[1], dtype, momentum=None, affine=False)
    compare("cpu", -1, SHARDS[0], np.float32)
    if "cuda" in BACKENDS:
        compare("cuda", 1, SHARDS[0], np.float32, device=True)
        compare("cuda", -1, SHARDS[1], np.float64, momentum=None, device=True)


@check
def eval_does_not_communicate():
    # Only rank 0 calls: were eval to communicate, it would wait for the others (mpiexec's timeout).
    if rank == 0:
        for backend in BACKENDS:
            x = np.random.default_rng(0).standard_normal((4, 3, 2))
            rm, rv, w = np.zeros(3), np.ones(3), np.full(3, 2.0)
            y, cache = sync_batch_norm_forward(x, running_mean=rm, running_var=rv, weight=w, backend=backend)
            dx, dw, db = sync_batch_norm_backward(np.ones_like(x), cache)
            close(y, nbn.batch_norm(x, running_mean=rm, running_var=rv, weight=w, backend="numpy"), x.dtype, "eval y")
            close(dx, np.full_like(x, 2.0 / np.sqrt(1 + 1e-5)), x.dtype, "eval dx")
    comm.Barrier()


# ----------------------------------------------------------------------------- training

def train(x, t, forward, backward, allreduce, steps=4, lr=0.5):
    """Linear (x @ W) + batch norm + mean squared error over the whole batch, plain SGD."""
    total = allreduce(np.array([float(len(x))]))[0]
    rng = np.random.default_rng(7)
    W = rng.standard_normal((x.shape[1], t.shape[1])) / np.sqrt(x.shape[1])
    gamma, beta = np.ones(t.shape[1]), np.zeros(t.shape[1])
    rm, rv = np.zeros(t.shape[1]), np.ones(t.shape[1])
    losses = []
    for _ in range(steps):
        y, cache = forward(x @ W, weight=gamma, bias=beta, running_mean=rm, running_var=rv, training=True)
        losses.append(allreduce(np.array([0.5 * np.square(y - t).sum() / total]))[0])
        dh, dgamma, dbeta = backward((y - t) / total, cache)
        for param, grad in ((W, x.T @ dh), (gamma, dgamma), (beta, dbeta)):
            param -= lr * allreduce(grad)
    return W, gamma, beta, rm, rv, np.array(losses)


def allreduce_sum(a):
    a = np.ascontiguousarray(a, np.float64)
    comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
    return a


@check
def training_keeps_ranks_identical():
    shards = SHARDS[0]
    rng = np.random.default_rng(99)
    x, t = rng.standard_normal((sum(shards), 5)), rng.standard_normal((sum(shards), 4))
    want = train(x, t, nbn.batch_norm_forward, nbn.batch_norm_backward, lambda a: a)
    mine = my_slice(shards)
    for backend in ("numpy", "cpu"):
        def forward(h, **kw):
            return sync_batch_norm_forward(h, backend=backend, **kw)
        got = train(x[mine], t[mine], forward, sync_batch_norm_backward, allreduce_sum)
        for a, b, what in zip(got, want, ("W", "gamma", "beta", "running_mean", "running_var", "loss")):
            same_on_every_rank(a, what)
            close(a, b, np.float64, what)
        assert got[-1][-1] < got[-1][0], "the loss went down"


@check
def sync_layers_train_like_batch_norm_on_the_whole_batch():
    shards = SHARDS[1]
    rng = np.random.default_rng(5)
    x = (2.0 + rng.standard_normal((sum(shards), 3, 2, 2))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    mine = my_slice(shards)
    for backend in BACKENDS:
        whole = nbn.layers.BatchNorm2d(3, momentum=None, backend=backend)
        sync = nbn.layers.SyncBatchNorm.convert_sync_batchnorm([nbn.layers.BatchNorm2d(3, momentum=None)])[0]
        sync.to(backend)
        assert isinstance(sync, nbn.layers.SyncBatchNorm)
        for step in range(3):
            out = {}
            for layer, xs, dys, reduce in ((whole, x, dy, lambda g: g), (sync, x[mine], dy[mine], allreduce_sum)):
                layer.zero_grad()
                out[layer] = host(layer(xs)), host(layer.backward(dys))
                for name, param in layer.params.items():  # SGD with the gradients summed over the ranks
                    new = host(param) - 0.1 * reduce(host(layer.grads[name]).astype(np.float64))
                    layer.load_state_dict({name: new}, strict=False)
            for i, what in enumerate(("y", "dx")):
                close(out[sync][i], out[whole][i][mine], np.float32, f"{backend} layer {what}, step {step}")
        want, got = whole.state_dict(), sync.state_dict()
        assert got.keys() == want.keys()
        for key in want:
            same_on_every_rank(got[key], f"{backend} layer {key}")
            close(got[key], want[key], np.float32, f"{backend} layer {key}")
        assert int(got["num_batches_tracked"]) == 3
        # Eval: the running statistics, no communication (rank 0 alone).
        whole.eval(), sync.eval()
        if rank == 0:
            close(sync(x), whole(x), np.float32, f"{backend} layer eval")
        comm.Barrier()


# ----------------------------------------------------------------------------- errors

def snapshot(*arrays):
    return [a.copy() for a in arrays]


@check
def errors_are_raised_on_every_rank():
    rng = np.random.default_rng(rank)
    rm, rv, counter = np.zeros(3), np.ones(3), np.array([5], np.int64)
    before = snapshot(rm, rv, counter)
    kw = dict(running_mean=rm, running_var=rv, training=True, momentum=None, num_batches_tracked=counter)

    # A communicator of the wrong type: TypeError, no communication.
    x = rng.standard_normal((4, 3))
    raises(TypeError, lambda: sync_batch_norm(x, comm="world", **kw), "intracommunicator")
    raises(TypeError, lambda: sync_batch_norm(x, comm=MPI.COMM_NULL, **kw), "COMM_NULL")

    # The ranks disagree on the number of channels (the last rank has 4).
    channels = 4 if rank == size - 1 else 3
    if size > 1:
        xc = rng.standard_normal((4, channels, 2))
        raises(ValueError, lambda: sync_batch_norm(xc, training=True), "disagree on the number of channels",
               f"rank {size - 1}: 4")

    # One value per channel in all (rank 0 has one sample, the others none).
    x1 = rng.standard_normal((1 if rank == 0 else 0, 3, 1))
    raises(ValueError, lambda: sync_batch_norm(x1, **kw), "more than 1 value per channel", "got 1 in all")

    # A bad argument on one rank: its own error there, one naming it on the others.
    bad = size - 1
    w = np.ones(4 if rank == bad else 3)
    exc = raises(ValueError, lambda: sync_batch_norm(x, weight=w, **kw), "weight has shape")
    assert (f"rank {bad} of {size}" in str(exc)) == (rank != bad), exc
    xi = x.astype(np.int64) if rank == 0 else x
    raises(TypeError, lambda: sync_batch_norm(xi, **kw), "dtype int64")

    # A kernel failing on one rank once the arguments are agreed (out of memory, say): every rank raises.
    impl = get_impl("sync_batch_norm", "cpu")
    original = impl.local_moments

    def fail(*args):
        raise RuntimeError("simulated failure")

    impl.local_moments = fail if rank == bad else original
    try:
        raises(RuntimeError, lambda: sync_batch_norm(x, backend="cpu", **kw), "simulated failure")
    finally:
        impl.local_moments = original

    for a, b in zip((rm, rv, counter), before):
        assert np.array_equal(a, b), f"rank {rank}: a failed call wrote to its arguments"

    # A bad dy on one rank in the backward: every rank raises; the cache still works afterwards.
    y, cache = sync_batch_norm_forward(x, **kw)
    dy = np.ones((5, 3)) if rank == bad else np.ones_like(x)
    exc = raises(ValueError, lambda: sync_batch_norm_backward(dy, cache), "dy has shape")
    assert (f"rank {bad} of {size}" in str(exc)) == (rank != bad), exc
    dx, dw, db = sync_batch_norm_backward(np.ones_like(x), cache)
    close(dx, np.zeros_like(x), np.float64, "dx of a constant dy")
    assert counter[0] == 6
    same_on_every_rank(rm, "running_mean after the errors")


# ----------------------------------------------------------------------------- driver

def main():
    for fn in CHECKS:
        try:
            fn()
        except BaseException:
            sys.stdout.flush()
            sys.stderr.write(f"sync_checks: rank {rank} of {size} failed in {fn.__name__}:\n"
                             f"{traceback.format_exc()}")
            sys.stderr.flush()
            comm.Abort(1)
    comm.Barrier()
    if rank == 0:
        print(f"sync_checks: {len(CHECKS)} checks passed on {size} ranks ({', '.join(BACKENDS)})", flush=True)


if __name__ == "__main__":
    main()

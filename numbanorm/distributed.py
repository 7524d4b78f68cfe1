"""SyncBatchNorm over MPI: batch norm with the statistics of the batch of every rank.

Data-parallel training runs one process (rank) per shard of each batch. Batch norm
on a shard normalizes with that shard's statistics; ``sync_batch_norm`` normalizes
every shard with the statistics of the whole batch, so the ranks together compute
exactly what :func:`numbanorm.batch_norm` computes on the concatenated batch
(shards may differ in size, and a rank may have none), as PyTorch's SyncBatchNorm
does. Every rank must call it, in the same order, with the same communicator.

Forward (training), each rank:

1. validates its arguments and joins a tiny ``Allgather`` of ``(failed, channels,
   count)``: when any rank failed, or the ranks disagree on the number of
   channels, or there is a single value per channel in all, *every* rank raises,
   before anything is computed or written (no rank is left waiting in a collective);
2. computes its per-channel count, mean and sum of squared deviations (M2) with
   its backend's per-channel statistics primitive (on the GPU for the cuda backend);
3. joins one ``Allgather`` of its ``(mean, M2)`` (2 C float64, after a failure
   flag) and merges every rank's moments with Chan et al.'s parallel formula, in
   rank order;
4. updates the running statistics (unbiased variance with the global count) and
   normalizes its shard with the global statistics (batch norm's eval path).

Backward (training): each rank's ``sum(dy)`` and ``sum(dy * xhat)`` per channel
go through one ``Allgather`` and are added in rank order; ``dx`` is then exactly
that shard's slice of batch norm's ``dx`` on the whole batch. ``dweight`` and
``dbias`` are the rank's own share: their sum over the ranks (which the training
script all-reduces with the other parameters' gradients) is the whole batch's.

Why gather and merge rather than ``Allreduce``: MPI does not promise that a
reduction gives the same bits on every rank (the order in which an algorithm
combines the contributions may differ from rank to rank), and Chan's merge is
not associative in floating point. Gathered, every rank holds the same table and
does the same float64 operations in the same order, so the statistics, the
running statistics and the gradient sums are bitwise identical on every rank,
and the parameters of a data-parallel model cannot drift apart. The tables are
tiny (ranks x 2 C numbers).

Eval (``training=False``, running statistics) is plain batch norm and does no
communication. mpi4py is imported on first use (``pip install 'numbanorm[mpi]'``),
never by ``import numbanorm``.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ._dispatch import get_impl
from .functional import (_backend_for, _backward_input, _backward_result, _batch_norm_args, _check_cache,
                         _forward_result, _in_compute_dtype, _momentum_factor, _run_backward, _run_forward)

__all__ = ["sync_batch_norm", "sync_batch_norm_forward", "sync_batch_norm_backward"]

OP = "sync_batch_norm"
_ERRORS = {"TypeError": TypeError, "ValueError": ValueError}


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("numbanorm.distributed needs mpi4py: pip install 'numbanorm[mpi]'") from exc
    return MPI


def _communicator(comm):
    """``comm``, or ``MPI.COMM_WORLD`` for None; TypeError unless it is an mpi4py intracommunicator."""
    MPI = _mpi()
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm):
        what = "MPI.COMM_NULL" if comm == MPI.COMM_NULL else type(comm).__name__
        raise TypeError(f"comm must be an mpi4py intracommunicator such as MPI.COMM_WORLD, got {what}")
    return comm


def _raise_if_any_failed(comm, error, failed, what):
    """Every rank raises when any rank failed (``failed``: one flag per rank, the same everywhere).

    A rank that failed raises its own error; the others learn its message through
    one more collective and raise the same type of error naming that rank.
    """
    ranks = np.flatnonzero(failed)
    if ranks.size == 0:
        return
    reports = comm.allgather(None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    name, message = reports[ranks[0]]
    raise _ERRORS.get(name, RuntimeError)(
        f"{what} failed on rank {ranks[0]} of {comm.Get_size()} ({name}: {message})")


def _merge(counts, means, m2s):
    """Chan et al.'s parallel formula over the ranks, in rank order: the global (mean, M2) per channel.

    ``counts[r]`` values per channel on rank ``r``, whose mean and sum of squared
    deviations are ``means[r]`` and ``m2s[r]``. The same merge as the CPU
    primitive's (:func:`numbanorm.cpu.channelwise.chan_merge`), in float64; ranks
    without samples add nothing.
    """
    n = 0.0
    mean, m2 = np.zeros(means.shape[1]), np.zeros(means.shape[1])
    for nk, mean_k, m2_k in zip(counts.astype(np.float64), means, m2s):
        if nk == 0:
            continue
        total = n + nk
        delta = mean_k - mean
        mean = mean + delta * (nk / total)
        m2 = m2 + m2_k + delta * delta * (n * nk / total)
        n = total
    return mean, m2


def sync_batch_norm_forward(x, *, running_mean=None, running_var=None, weight=None, bias=None, training=False,
                            momentum=0.1, eps=1e-5, axis=1, num_batches_tracked=None, backend=None, comm=None):
    """Batch normalization over the batch of every rank of ``comm``, with the cache for the backward.

    The arguments are :func:`numbanorm.batch_norm`'s, plus ``comm``; ``x`` is
    this rank's shard of the batch (any number of samples, none included). See
    :func:`sync_batch_norm`.

    Returns
    -------
    y : array
        This rank's shard normalized, of the kind, shape and dtype of ``x``.
    cache : Cache
        For :func:`sync_batch_norm_backward`; ``cache.mean`` and ``cache.rstd``
        are the statistics of the whole batch when training (the same on every rank).
    """
    if not training:  # running statistics: plain batch norm, nothing to communicate
        if comm is not None:
            _communicator(comm)
        x, p = _batch_norm_args(x, running_mean, running_var, weight, bias, training, momentum, eps, axis,
                                num_batches_tracked, OP)
        p.comm, p.count = comm, None
        return _run_forward(OP, x, p, backend, weight, bias, running_mean, running_var)

    comm = _communicator(comm)
    error, channels, count = None, 0, 0
    try:  # a rank whose arguments are wrong still joins the collective, to tell the others
        x, p = _batch_norm_args(x, running_mean, running_var, weight, bias, training, momentum, eps, axis,
                                num_batches_tracked, OP, check_count=False)
        name = _backend_for(x, backend, weight, bias, running_mean, running_var)
        impl = get_impl(OP, name)
        channels = x.shape[p.axis]
        count = x.size // channels if channels else 0
    except Exception as exc:
        error = exc

    # 1. Agree: the buffer of step 3 has 2 C numbers, so C must be known to match first.
    size = comm.Get_size()
    table = np.empty((size, 3), np.int64)
    comm.Allgather(np.array([error is not None, channels, count], np.int64), table)
    _raise_if_any_failed(comm, error, table[:, 0], "sync_batch_norm_forward")
    if (table[:, 1] != channels).any():
        listing = ", ".join(f"rank {r}: {c}" for r, c in enumerate(table[:, 1].tolist()))
        raise ValueError(f"sync_batch_norm_forward: the ranks disagree on the number of channels ({listing}); "
                         f"x's channel axis must have the same size on every rank")
    counts = table[:, 2]
    total = int(counts.sum())
    if total <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {total} in all over "
                         f"{size} rank{'s' * (size != 1)} (input size {p.shape} on this rank)")

    # 2. This rank's moments, 3. everyone's, merged in rank order (bitwise the same on every rank).
    # A flag leads the buffer: a rank whose kernels fail (out of device memory, say) tells the others.
    state, mine = None, np.zeros(1 + 2 * channels)
    try:
        state, mean, m2 = impl.local_moments(_in_compute_dtype(x, p.cdtype), p)
        mine[1:] = np.concatenate([mean, m2])
    except Exception as exc:
        error = exc
        mine[0] = 1.0
    moments = np.empty((size, 1 + 2 * channels))
    comm.Allgather(mine, moments)
    _raise_if_any_failed(comm, error, moments[:, 0], "sync_batch_norm_forward")
    mean, m2 = _merge(counts, moments[:, 1:1 + channels], moments[:, 1 + channels:])

    # 4. Running statistics as batch norm updates them, then batch norm's eval path with these statistics.
    p.factor = _momentum_factor(p.momentum, p.num_batches_tracked, p.update_running)
    if p.update_running:
        impl.update_running(p.running_mean, mean, p.factor)
        impl.update_running(p.running_var, m2 / (total - 1), p.factor)
    given = SimpleNamespace(**vars(p))
    given.training = given.update_running = False
    given.running_mean, given.running_var = mean, m2 / total
    y, mean_out, rstd_out, saved = impl.normalize(state, given)
    p.comm, p.count = comm, total
    return _forward_result(OP, name, p, y, mean_out, rstd_out, saved)


def sync_batch_norm(x, **kwargs):
    """Batch normalization with the statistics of the batch of every rank of an MPI communicator.

    Each rank passes its shard ``x`` of the batch; the result on each rank is its
    slice of what :func:`numbanorm.batch_norm` gives on the concatenation of every
    rank's shard along axis 0 (shards may differ in size; a rank may have no
    samples). Every rank of ``comm`` must call it when training, in the same
    order. The statistics, and so the running statistics, are bitwise the same
    on every rank. In eval it is :func:`numbanorm.batch_norm` with the running
    statistics, with no communication.

    Parameters
    ----------
    x : array, shape (N, C, ...) or channels-last with ``axis``
        This rank's shard of the batch; N may differ between ranks, and be 0.
    running_mean, running_var, weight, bias, training, momentum, eps, axis, num_batches_tracked, backend
        As :func:`numbanorm.batch_norm`; the running statistics are updated with
        the whole batch's (unbiased variance with the total count).
    comm : mpi4py.MPI.Intracomm, optional
        The ranks that share the batch; default ``MPI.COMM_WORLD``.

    Returns
    -------
    y : array
        Same kind, shape and dtype as ``x``.

    Raises
    ------
    TypeError
        For a ``comm`` that is not an mpi4py intracommunicator, and for the
        errors of :func:`numbanorm.batch_norm`.
    ValueError
        When the ranks disagree on the number of channels, for a single value per
        channel in all when training, and for the errors of :func:`numbanorm.batch_norm`.
        When training, an error on any rank is raised on every rank (the rank's
        own error there, one naming it elsewhere), before anything is written.
    """
    return sync_batch_norm_forward(x, **kwargs)[0]


def sync_batch_norm_backward(dy, cache, *, backend=None):
    """Gradients of :func:`sync_batch_norm_forward`: ``(dx, dweight, dbias)``.

    When training, every rank of the forward's communicator must call it, in
    the same order. ``dx`` is this rank's slice of batch norm's ``dx`` on the
    whole batch; ``dweight`` and ``dbias`` are this rank's share, whose sum over
    the ranks is the whole batch's (all-reduce them with the other gradients, as
    PyTorch's SyncBatchNorm leaves to DistributedDataParallel). A bad ``dy`` on
    any rank raises on every rank.

    Parameters
    ----------
    dy : array
        Gradient of the loss with respect to this rank's ``y``.
    cache : Cache
        The cache returned by :func:`sync_batch_norm_forward`; it is not modified.
    backend : str, optional
        The backend that ran the forward (the default; another raises ValueError).

    Returns
    -------
    dx, dweight, dbias : array or None
        ``dweight``/``dbias`` are None when the forward had no weight/bias.
    """
    _check_cache(OP, cache)  # without the forward's cache there is no communicator to tell the others
    p = cache.params
    if not p["training"]:
        return _run_backward(OP, dy, cache, backend, ("weight", "bias"))
    comm, like = p["comm"], dy
    channels = p["shape"][p["axis"]]
    error, state, sums = None, None, np.zeros((2, channels))
    try:
        dy = _backward_input(OP, dy, cache, backend)
        state, *local = get_impl(OP, cache.backend).grad_sums(dy, cache)
        sums = np.stack(local)
    except Exception as exc:
        error = exc
    # One collective carries the failure flag and the sums; every rank adds the same table up in rank order.
    table = np.empty((comm.Get_size(), 1 + 2 * channels))
    comm.Allgather(np.concatenate([[float(error is not None)], sums.reshape(-1)]), table)
    _raise_if_any_failed(comm, error, table[:, 0], "sync_batch_norm_backward")
    totals = table[0, 1:].copy()
    for row in table[1:]:
        totals += row[1:]
    totals = totals.reshape(2, channels)
    grads = get_impl(OP, cache.backend).grads(state, cache, totals[0], totals[1], p["count"])
    return _backward_result(grads, cache, like, ("weight", "bias"))

"""SyncBatchNorm: batch norm whose training statistics are those of every rank's batch (MPI)."""
from __future__ import annotations

import numpy as np

from .. import distributed
from .. import functional as F
from .batch_norm import BatchNorm, BatchRenorm


class SyncBatchNorm(BatchNorm):
    """Batch normalization with the statistics of the batch of every rank of an MPI communicator.

    In training mode each rank normalizes its shard of the batch with the mean
    and variance of the whole batch (see :func:`numbanorm.distributed.sync_batch_norm`),
    so the ranks together compute what :class:`BatchNorm` computes on the whole
    batch, and their running statistics stay identical. The gradients that
    :meth:`backward` adds into ``grads`` are this rank's share: all-reduce them
    (sum) with the other parameters' gradients, as DistributedDataParallel does
    for PyTorch's SyncBatchNorm. Eval mode uses the running statistics and does
    no communication (as PyTorch's, it does not synchronize outside training,
    even with ``track_running_stats=False``). Every rank must run the layer's
    training forward and backward, in the same order as the other ranks.

    Any input of at least 2 dimensions is accepted (like PyTorch's SyncBatchNorm,
    it has no 1d/2d/3d variants). mpi4py is imported at the first training call.

    Parameters
    ----------
    num_features, eps, momentum, affine, track_running_stats, axis, dtype, backend
        As :class:`BatchNorm`.
    comm : mpi4py.MPI.Intracomm, optional
        The ranks that share the batch (PyTorch's ``process_group``); default
        ``MPI.COMM_WORLD``. Not part of the state dict.

    Examples
    --------
    >>> bn = SyncBatchNorm(16)                       # doctest: +SKIP
    >>> y = bn(x_shard); dx = bn.backward(dy_shard)  # doctest: +SKIP
    >>> layers = SyncBatchNorm.convert_sync_batchnorm([conv, BatchNorm2d(16), relu])  # doctest: +SKIP
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 axis=1, dtype=np.float32, backend=None, comm=None):
        if comm is not None:
            distributed._communicator(comm)  # TypeError now rather than at the first forward
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         axis=axis, dtype=dtype, backend=backend)
        self.comm = comm

    def _functional_forward(self, x, **kwargs):
        if not self.training:  # no communication outside training, as PyTorch's
            return F.batch_norm_forward(x, **kwargs)
        return distributed.sync_batch_norm_forward(x, comm=self.comm, **kwargs)

    def _functional_backward(self, dy, cache):
        if cache.op == "batch_norm":
            return F.batch_norm_backward(dy, cache)
        return distributed.sync_batch_norm_backward(dy, cache)

    @classmethod
    def convert_sync_batchnorm(cls, module, comm=None):
        """Batch norm layers converted to SyncBatchNorm, as PyTorch's ``convert_sync_batchnorm``.

        Every :class:`BatchNorm` (``BatchNorm1d``/``2d``/``3d``) found in
        ``module`` becomes a SyncBatchNorm with the same settings, mode and
        backend that shares its very arrays: ``params``, ``grads`` and buffers
        (running statistics, ``num_batches_tracked``) are the same objects, so
        references to them (an optimizer's, say) stay valid. Other layers,
        :class:`BatchRenorm` and SyncBatchNorm itself are kept as they are.

        Parameters
        ----------
        module : layer, or list, tuple or dict of layers (nested any way)
            A single layer, or the containers a model made of numbanorm layers
            is kept in.
        comm : mpi4py.MPI.Intracomm, optional
            The communicator of the new layers (default ``MPI.COMM_WORLD``).

        Returns
        -------
        The converted layer, or a new container of the same type (the one given
        is left unchanged) holding the converted layers.
        """
        if isinstance(module, dict):
            return type(module)((k, cls.convert_sync_batchnorm(m, comm)) for k, m in module.items())
        if isinstance(module, (list, tuple)):
            converted = [cls.convert_sync_batchnorm(m, comm) for m in module]
            return type(module)(*converted) if hasattr(module, "_fields") else type(module)(converted)
        if not isinstance(module, BatchNorm) or isinstance(module, (BatchRenorm, SyncBatchNorm)):
            return module
        sync = cls.__new__(cls)
        vars(sync).update(vars(module))  # settings, mode, backend, and the same params/grads/buffers dicts' arrays
        sync.params, sync.grads, sync.buffers = dict(module.params), dict(module.grads), dict(module.buffers)
        sync._cache = None
        if comm is not None:
            distributed._communicator(comm)
        sync.comm = comm
        return sync

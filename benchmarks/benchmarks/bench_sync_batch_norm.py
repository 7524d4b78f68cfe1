"""SyncBatchNorm (numbanorm.distributed): what synchronizing the statistics costs per call.

asv runs one process, so the communicator is ``MPI.COMM_SELF``: what is measured
is the protocol itself - the collectives (two ``Allgather`` in the forward, one in
the backward), the merge of the moments on the host and, on cuda, the copies of
the per-channel vectors between device and host - over batch_norm on the same
data, NCHW, training with running statistics. The time the other ranks take to
arrive, which a real job adds, is not in it. Skipped without mpi4py
(``pip install '.[mpi]'``).
"""
from ._common import BACKENDS, SMOKE, bench, find_case, prepared

# A tiny input, where the work is nothing and the overhead is all there is, and the small images.
SHAPES = ["x".join(map(str, bench.TINY))] + ([] if SMOKE else [bench.find_case("batch_norm", "NCHW").label("small")])
OVERHEAD_UNIT = "seconds"


class _SyncRun:
    """``sync_batch_norm_forward``/``_backward`` on the data of a batch norm :class:`Run`."""

    def __init__(self, run, comm):
        from numbanorm.distributed import sync_batch_norm_backward, sync_batch_norm_forward
        self.run, self.comm = run, comm
        self._forward, self._backward = sync_batch_norm_forward, sync_batch_norm_backward
        self.cache = None

    def forward(self):
        run = self.run
        _, self.cache = self._forward(run.x, backend=run.backend, comm=self.comm, **run.kwargs)
        run.sync()

    def backward(self):
        if self.cache is None:
            self.forward()
        self._backward(self.run.dy, self.cache)
        self.run.sync()

    def warm(self):
        self.forward()
        self.backward()
        return self


class SyncBatchNormOverhead:
    """``sync_batch_norm_forward``/``_backward`` on one rank, and their time over batch_norm's."""

    params = [list(BACKENDS), SHAPES]
    param_names = ["backend", "shape"]
    timeout = 300.0

    def setup(self, backend, shape):
        try:
            from mpi4py import MPI
        except ImportError:
            raise NotImplementedError("mpi4py is not installed (pip install '.[mpi]')") from None
        except RuntimeError as exc:  # mpi4py without an MPI library it can load
            raise NotImplementedError(f"mpi4py cannot load MPI: {exc}") from None
        case = find_case("batch_norm", "NCHW")

        def make():
            plain = bench.Run(case, case.size_of(shape), "float32", backend).warm()
            return plain, _SyncRun(plain, MPI.COMM_SELF).warm()

        self.plain, self.sync = prepared(("sync", backend, shape), make)

    def time_forward(self, backend, shape):
        self.sync.forward()

    def time_backward(self, backend, shape):
        self.sync.backward()

    def _overhead(self, direction):
        # sampled in turn, so both see the same load from other processes
        ours, theirs = bench.interleaved([getattr(self.sync, direction), getattr(self.plain, direction)])
        return ours - theirs

    def track_forward_overhead(self, backend, shape):
        """Seconds a forward takes over batch_norm's on the same data."""
        return self._overhead("forward")

    track_forward_overhead.unit = OVERHEAD_UNIT

    def track_backward_overhead(self, backend, shape):
        """Seconds a backward takes over batch_norm's on the same data."""
        return self._overhead("backward")

    track_backward_overhead.unit = OVERHEAD_UNIT

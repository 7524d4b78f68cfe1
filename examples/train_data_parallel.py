"""Data-parallel training with SyncBatchNorm: one process (rank) per shard of every batch.

    pip install 'numbanorm[mpi]'          # mpi4py and MPICH (which brings mpiexec)
    mpiexec -n 2 python examples/train_data_parallel.py

Every rank builds the same model from the same seed, takes its shard of each
batch, runs the forward and backward, and sums the gradients over the ranks
(``Allreduce``), so every rank applies the same update and the parameters stay
identical. SyncBatchNorm normalizes each shard with the statistics of the whole
batch, so the result is the same as one process training on whole batches.
Run it with ``-n 1`` (or plain ``python``) to compare: the losses agree to
rounding.
"""
import numpy as np
from mpi4py import MPI

import numbanorm as nbn

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


class Linear:
    """``y = x @ weight + bias``, with the same params/grads dicts as numbanorm's layers."""

    def __init__(self, n_in, n_out, rng):
        self.params = {"weight": (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32),
                       "bias": np.zeros(n_out, np.float32)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def __call__(self, x):
        self.x = x
        return x @ self.params["weight"] + self.params["bias"]

    def backward(self, dy):
        self.grads["weight"] += self.x.T @ dy
        self.grads["bias"] += dy.sum(axis=0)
        return dy @ self.params["weight"].T

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0


class ReLU:
    params = grads = {}

    def __call__(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dy):
        return dy * self.mask

    def zero_grad(self):
        pass


def main(steps=100, batch=64, lr=0.2):
    rng = np.random.default_rng(0)  # the same seed everywhere: the same initial model on every rank
    model = [Linear(8, 32, rng), nbn.layers.BatchNorm1d(32), ReLU(), Linear(32, 1, rng)]
    model = nbn.layers.SyncBatchNorm.convert_sync_batchnorm(model)  # BatchNorm1d -> SyncBatchNorm
    true_w = rng.standard_normal(8) / np.sqrt(8)

    for step in range(steps):
        # Every rank draws the same global batch and keeps its shard (shards may differ in size).
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        target = np.sin(x @ true_w).astype(np.float32)[:, None]
        x, target = np.array_split(x, size)[rank], np.array_split(target, size)[rank]

        for layer in model:
            layer.zero_grad()
        out = x
        for layer in model:
            out = layer(out)
        dy = 2.0 * (out - target) / batch  # d(mean squared error over the whole batch)/d(out)
        for layer in reversed(model):
            dy = layer.backward(dy)

        # Each rank holds its share of every gradient: sum them over the ranks, then all take the same step.
        for layer in model:
            for name, grad in layer.grads.items():
                comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
                layer.params[name] -= lr * grad

        loss = comm.allreduce(float(np.square(out - target).sum())) / batch
        if rank == 0 and (step % 25 == 0 or step == steps - 1):
            print(f"step {step:3d}  loss {loss:.4f}", flush=True)

    # The parameters and running statistics are the same on every rank.
    state = b"".join(a.tobytes() for layer in model for a in (*layer.params.values(),
                                                                 *getattr(layer, "buffers", {}).values()))
    identical = all(s == state for s in comm.allgather(state))
    if rank == 0:
        print(f"{size} ranks, parameters identical on every rank: {identical}", flush=True)
    return identical


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)

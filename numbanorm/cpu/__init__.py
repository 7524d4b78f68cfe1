"""The ``"cpu"`` backend: Numba ``@njit(parallel=True)`` kernels.

Two shared primitives do the work: :mod:`.rowwise` (normalize rows: layer, RMS,
group and instance norm) and :mod:`.channelwise` (per-channel statistics: batch
norm in both layouts). Each op module puts its input in the primitive's form
and back. Kernels compile lazily on first use and are cached on disk.
"""
from importlib import import_module

from .._dispatch import register

OPS = ("batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "weight_norm", "spectral_norm", "batch_renorm", "local_response_norm",
       "sync_batch_norm")

for _op in OPS:
    register(_op, "cpu")(import_module(f".{_op}", __name__))

"""The ``"cuda"`` backend: Numba ``@cuda.jit`` kernels, on a GPU or the CUDA simulator.

Two shared primitives do the work, as on the CPU: :mod:`.rowwise` (normalize
rows: layer, RMS, group and instance norm) and :mod:`.channelwise` (per-channel
statistics: batch norm in both layouts); :mod:`._reduce` holds the reductions
they share and :mod:`._launch` the launch configurations and array handling.
Each op module puts its input in the primitive's form and back.

Importing this module imports numba.cuda (ImportError without numba-cuda) and
raises RuntimeError when there is neither a GPU nor the simulator
(``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported), so the backend is
registered only where it can run.
"""
from importlib import import_module

from numba import cuda

from .._dispatch import register

OPS = ("batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "weight_norm", "batch_renorm", "local_response_norm", "spectral_norm",
       "sync_batch_norm")


def check_available():
    """Raise RuntimeError unless CUDA kernels can run here (a GPU, or the simulator)."""
    if not cuda.is_available():
        raise RuntimeError("no CUDA GPU is available (NUMBA_ENABLE_CUDASIM=1 runs the kernels in "
                           "Numba's CUDA simulator)")


check_available()

for _op in OPS:
    register(_op, "cuda")(import_module(f".{_op}", __name__))

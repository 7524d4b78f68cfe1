"""The ``"numpy"`` backend: plain float64 NumPy, written to be read; the oracle of every test.

Each op is a module with ``forward(x, params) -> (y, mean, rstd, saved)`` and
``backward(dy, cache) -> grads``.
"""
from importlib import import_module

from .._dispatch import register

OPS = ("batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "weight_norm", "spectral_norm", "batch_renorm", "local_response_norm",
       "sync_batch_norm")

for _op in OPS:
    register(_op, "numpy")(import_module(f".{_op}", __name__))

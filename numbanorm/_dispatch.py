"""Backend choice, the implementation registry and array-kind handling.

A backend is a name (``"numpy"``, ``"cpu"``, ``"cuda"``) and a module that fills
the registry ``{(op, backend): implementation}`` when it is first imported, so
new ops and backends plug in without touching :mod:`numbanorm.functional`.
Nothing here imports numba, let alone numba.cuda.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import sys
from types import MappingProxyType

import numpy as np

BACKENDS = ("numpy", "cpu", "cuda")

# The module that registers each backend's implementations when imported.
_BACKEND_MODULES = {
    "numpy": "numbanorm.reference",
    "cpu": "numbanorm.cpu",
    "cuda": "numbanorm.cuda",
}

_registry: dict[tuple[str, str], object] = {}
_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "numbanorm_backend", default=None)
_global_backend: str | None = None


def register(op, backend):
    """Class or object decorator: make ``impl`` the implementation of ``op`` on ``backend``."""
    def decorate(impl):
        _registry[(op, backend)] = impl
        return impl
    return decorate


def _check_name(name, where):
    if name not in BACKENDS:
        raise ValueError(f"{where}: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def set_backend(name):
    """Set the process-wide default backend (``None`` returns to inference from the arrays).

    It ranks below ``backend=`` and ``with numbanorm.backend(...)`` and above the
    ``NUMBANORM_BACKEND`` environment variable.
    """
    global _global_backend
    _global_backend = None if name is None else _check_name(name, "set_backend")


def get_backend():
    """The backend forced by context, ``set_backend`` or ``NUMBANORM_BACKEND``; None if inferred."""
    name = _context_backend.get() or _global_backend
    if name is not None:
        return name
    env = _environment_backend()
    return _check_name(env, "NUMBANORM_BACKEND") if env else None


_ENV_KEY = os.environ.encodekey("NUMBANORM_BACKEND")


def _environment_backend():
    """``os.environ.get("NUMBANORM_BACKEND")``, read from the mapping's own dict: ``get`` raises
    and catches a KeyError when the variable is unset, a microsecond on every call."""
    value = os.environ._data.get(_ENV_KEY)
    return None if value is None else os.environ.decodevalue(value)


@contextlib.contextmanager
def backend(name):
    """Context manager choosing the backend for calls made inside it (per thread and task)."""
    token = _context_backend.set(_check_name(name, "backend"))
    try:
        yield name
    finally:
        _context_backend.reset(token)


def is_device_array(a):
    """True for CUDA arrays: Numba device arrays, CuPy, torch CUDA tensors, simulator arrays."""
    return hasattr(a, "__cuda_array_interface__") or hasattr(a, "__cuda_ndarray__")


def device_view(a):
    """[cuda] A CuPy array or torch CUDA tensor as a Numba device array sharing its memory."""
    try:
        arrays = importlib.import_module("numbanorm.cuda._arrays")
    except ImportError as exc:
        raise RuntimeError(f"backend 'cuda' is not available: {exc}") from exc
    return arrays.device_view(a)


def as_kind(a, like):
    """[cuda] The device array ``a`` as the kind of array ``like`` is (CuPy, torch); else ``a``.

    Only modules the caller has already imported are used, never imported here.
    """
    if a is None or isinstance(like, np.ndarray) or not is_device_array(a):
        return a
    module = type(like).__module__.partition(".")[0]
    if module == "cupy" and "cupy" in sys.modules:
        return sys.modules["cupy"].asarray(a)
    if module == "torch" and "torch" in sys.modules:
        return sys.modules["torch"].as_tensor(a, device=like.device)
    return a


def infer_backend(*arrays):
    """``"cuda"`` if any array lives on a GPU, else ``"cpu"``."""
    for a in arrays:
        if a is not None and not isinstance(a, np.ndarray) and is_device_array(a):
            return "cuda"
    return "cpu"


def resolve_backend(explicit, *arrays, default=None):
    """Apply the precedence: argument > context > set_backend > env > ``default`` > arrays."""
    if explicit is not None:
        return _check_name(explicit, "backend=")
    return get_backend() or default or infer_backend(*arrays)


def available_backends():
    """The backends usable in this process, in order of preference for NumPy input."""
    names = ["numpy"]
    for name in ("cpu", "cuda"):
        try:
            _load(name)
        except (ImportError, RuntimeError):
            continue
        names.append(name)
    return names


def _load(name):
    module = importlib.import_module(_BACKEND_MODULES[name])
    check = getattr(module, "check_available", None)
    if check is not None:
        check()
    return module


def get_impl(op, name):
    """The implementation of ``op`` on backend ``name``, importing the backend on first use."""
    impl = _registry.get((op, name))
    if impl is None:
        try:
            _load(name)
        except ImportError as exc:
            raise RuntimeError(f"backend {name!r} is not available: {exc}") from exc
        impl = _registry.get((op, name))
        if impl is None:
            raise NotImplementedError(f"{op} has no implementation on the {name!r} backend")
    return impl


class Cache:
    """What ``OP_backward`` needs from ``OP_forward``: references, never copies.

    Attributes
    ----------
    op, backend : str
        The operation and the backend that ran the forward.
    mean, rstd : array
        The statistics the forward normalized with (batch or running), in the
        compute dtype: per channel for batch norm, per (sample, group) for group
        norm, per (sample, channel) for instance norm, and with the shape of the
        non-normalized axes for layer and RMS norm (``mean`` is None for RMS norm).
        Host statistics are copied on first access (most training loops never
        look), so the backward's own arrays stay private.
    params : mapping
        The validated arguments of the call (read-only).
    saved : mapping
        Backend-private arrays (read-only).
    """

    __slots__ = ("op", "backend", "params", "saved", "_statistics")

    def __init__(self, op, backend, mean, rstd, params, saved):
        """``params`` and ``saved`` are dicts handed over by the caller (wrapped, not copied);
        ``mean`` and ``rstd`` (host arrays) may be in any float dtype and are not handed out."""
        setattr_ = object.__setattr__
        setattr_(self, "op", op)
        setattr_(self, "backend", backend)
        setattr_(self, "params", MappingProxyType(params))
        setattr_(self, "saved", MappingProxyType(saved))
        setattr_(self, "_statistics", [mean, rstd, None, None])  # as given, then as handed out

    @property
    def mean(self):
        return self._statistic(0)

    @property
    def rstd(self):
        return self._statistic(1)

    def _statistic(self, i):
        stats = self._statistics
        if stats[2 + i] is None:
            given = stats[i]
            stats[2 + i] = given.astype(self.params["cdtype"]) if isinstance(given, np.ndarray) else given
        return stats[2 + i]

    @property
    def sigma(self):
        """spectral_norm's estimate of the largest singular value (None for other ops)."""
        return self.saved.get("sigma")

    def __setattr__(self, name, value):
        raise AttributeError("a numbanorm cache is immutable")

    def __delattr__(self, name):
        raise AttributeError("a numbanorm cache is immutable")

    def __repr__(self):
        return f"<numbanorm cache of {self.op} on {self.backend}>"

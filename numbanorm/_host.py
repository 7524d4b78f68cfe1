"""Host-side helpers shared by the backends: canonical views and running statistics."""
import math

import numpy as np


def _same(a):
    return a


def rows_view(x, axes):
    """``x`` as C-contiguous rows ``(R, L)``, one row per index of the axes not in ``axes``.

    ``axes`` go last, in the order given (so a tuple ``(c, *spatial)`` puts the
    channel before the spatial axes). A copy is made only when ``x`` is not
    already laid out that way. Returns ``(x2, undo)`` where ``undo(y2)`` gives
    an array of ``x``'s shape back.
    """
    ndim, trailing = x.ndim, len(axes)
    if (axes[0] == ndim - trailing and axes[-1] == ndim - 1 and x.flags.c_contiguous
            and (trailing <= 3 or tuple(axes) == tuple(range(ndim - trailing, ndim)))):
        # The common case (layer norm over the last axes), taken first and checked cheaply
        # (first and last of up to three distinct axes fix the middle one): a small call costs
        # microseconds, the general path three.
        if ndim == 2 and trailing == 1:  # already rows
            return x, _same
        shape = x.shape
        x2 = x.reshape(-1, math.prod(shape[ndim - trailing:]))
        return x2, lambda y2: y2.reshape(shape)
    keep = [i for i in range(x.ndim) if i not in axes]
    perm = keep + list(axes)
    in_place = perm == list(range(x.ndim))
    moved = np.ascontiguousarray(x if in_place else x.transpose(perm))
    length = math.prod([x.shape[a] for a in axes])

    def undo(y2):
        y = y2.reshape(moved.shape)
        return y if in_place else y.transpose([perm.index(i) for i in range(len(perm))])

    rows = math.prod([x.shape[i] for i in keep])
    return moved.reshape(rows, length), undo


def slices_view(v, axis):
    """``v`` as rows, one per index of ``axis`` (a single row when ``axis`` is None), and the way back."""
    if axis == 0:  # (the common call, without a generator)
        return rows_view(v, tuple(range(1, v.ndim)))
    return rows_view(v, tuple(i for i in range(v.ndim) if axis is None or i != axis))


def matrix_view(w, axis):
    """``w`` as the matrix ``(w.shape[axis], -1)`` (C-contiguous), and the way back to ``w``'s shape."""
    if axis == 0 and w.flags.c_contiguous:  # (the common case, without moveaxis's per-call cost)
        shape = w.shape
        return w.reshape(shape[0], w.size // shape[0] if shape[0] else 0), lambda m: m.reshape(shape)
    moved = np.ascontiguousarray(np.moveaxis(w, axis, 0))
    rows = moved.shape[0]
    matrix = moved.reshape(rows, moved.size // rows if rows else 0)
    return matrix, lambda m: np.moveaxis(m.reshape(moved.shape), 0, axis)


def _dot(a, b):
    """``a . b`` of two float64 host vectors, without BLAS: numpy's ``a @ b`` runs in
    OpenBLAS's threads, which then spin for about 0.1 s and take the cores from the
    kernels that follow (measured: spectral_norm's forward 19 -> 40 ms on 2 cores)."""
    return float(np.einsum("i,i->", a, b))


def power_iteration(times_v, transpose_times_u, u, steps, eps, training):
    """spectral_norm's ``(u, v, sigma)``, float64 host vectors and ``sigma = u^T W v``, from
    the products ``W v`` and ``W^T u``.

    Training: ``steps`` rounds of ``v = normalize(W^T u)``, ``u = normalize(W v)``, as
    PyTorch does; sigma reuses the last ``W v``. Eval: ``v = normalize(W^T u)`` from
    the given ``u``. Norms are floored at ``eps``.
    """
    def normalize(a):
        return a / max(np.sqrt(_dot(a, a)), eps)

    if not training:
        v = normalize(transpose_times_u(u))
        return u, v, _dot(u, times_v(v))
    for _ in range(steps):
        v = normalize(transpose_times_u(u))
        w_v = times_v(v)
        u = normalize(w_v)
    return u, v, _dot(u, w_v)


def channel_view(x, axis):
    """``x`` as a C-contiguous ``(A, C, B)`` array with the channel axis in the middle."""
    x = np.ascontiguousarray(x)
    return x.reshape(math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1:]))


def sample_channel_view(x, axis):
    """``x`` as a C-contiguous ``(N, A, C, B)`` array: per sample, the channel axis in the middle."""
    x = np.ascontiguousarray(x)
    return x.reshape(x.shape[0], math.prod(x.shape[1:axis]), x.shape[axis], math.prod(x.shape[axis + 1:]))


def renorm_correction(mean, var, running_mean, running_var, eps, rmax, dmax):
    """Batch renormalization's constants per channel (float64): ``r = clip(sigma_B / sigma,
    1/rmax, rmax)`` and ``d = clip((mu_B - mu) / sigma, -dmax, dmax)``, sigma from the running variance."""
    sigma = np.sqrt(running_var.astype(np.float64) + eps)
    r = np.clip(np.sqrt(var + eps) / sigma, 1.0 / rmax, rmax)
    d = np.clip((mean - running_mean.astype(np.float64)) / sigma, -dmax, dmax)
    return r, d


def update_running(running, stat, factor):
    """PyTorch's running average, in place: ``running = (1 - factor) * running + factor * stat``."""
    running[...] = (1.0 - factor) * running.astype(np.float64) + factor * stat

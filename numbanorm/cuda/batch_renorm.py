"""Batch renormalization on the GPU: batch norm's kernels, with r and d folded into
the per-channel weight and bias (see numbanorm/cpu/batch_renorm.py).

The per-channel constants are made on the device by one small kernel each way,
in the compute dtype: nothing goes to the host and back but what the caller
keeps there (host running statistics are read from the host, as batch norm's).
Training: the statistics, r and d with the folded weight and bias (before the
running statistics move), the running averages, ``y``: 5 launches (6 for
channels-first data); the backward: batch norm's 3, and ``dweight``'s.
"""
import math

from numba import cuda

from . import batch_norm, channelwise
from ._arrays import channels, empty, give, is_host, to_device, to_host, vector
from ._launch import flat_config, kernel


@kernel
def _correction(mean, std, running_mean, running_var, w, b, sqrt_eps, eps, rmax, dmax, r_out, d_out, w_out, b_out):
    """``r = clip(sigma_B / sigma, 1/rmax, rmax)``, ``d = clip((mu_B - mu) / sigma, -dmax, dmax)`` with
    ``sigma = sqrt(running_var + eps)``, and the folded affine ``w * r``, ``w * d + b``, per channel."""
    T = mean.dtype.type
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        sigma = T(math.sqrt(T(running_var[c]) + eps))
        r = min(max(T(math.hypot(std[c], sqrt_eps)) / sigma, T(1) / rmax), rmax)  # sigma_B without std**2
        d = min(max((mean[c] - T(running_mean[c])) / sigma, -dmax), dmax)
        r_out[c], d_out[c] = r, d
        w_out[c], b_out[c] = w[c] * r, w[c] * d + b[c]


@kernel
def _weight_grad(sum_dy_xhat, sum_dy, r, d, out):
    """``dweight = sum(dy * xhat) * r + sum(dy) * d``."""
    for c in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[c] = sum_dy_xhat[c] * r[c] + sum_dy[c] * d[c]


def _correct(mean, std, p):
    """``(r, d, w * r, w * d + b)`` as device vectors in the compute dtype; one launch."""
    C = mean.shape[0]
    T = mean.dtype.type
    r, d, w_r, b_d = (empty(C, mean.dtype) for _ in range(4))
    if C:
        grid, block = flat_config(C)
        _correction[grid, block](mean, std, to_device(p.running_mean), to_device(p.running_var),
                                 vector(p.weight, C, 1.0, mean.dtype), vector(p.bias, C, 0.0, mean.dtype),
                                 T(math.sqrt(p.eps)), T(p.eps), T(p.rmax), T(p.dmax), r, d, w_r, b_d)
    return r, d, w_r, b_d


def forward(x, p):
    if not p.training:
        return batch_norm.forward(x, p)
    host = is_host(x)
    x3, undo = channels(x, p.axis, None)  # float16 as it is: the kernels compute in p.cdtype
    mean, std, rstd = channelwise.moments(x3, p.eps, p.cdtype)
    r, d, w_r, b_d = _correct(mean, std, p)  # from the running statistics before they move
    channelwise.update_running_stats(p.running_mean, p.running_var, mean, std, x3.shape[0] * x3.shape[2], p.factor)
    y3 = channelwise.normalize(x3, mean, rstd, w_r, b_d, p.dtype)
    saved = {"x3": x3, "mean": mean, "rstd": rstd, "r": r, "d": d, "w_r": w_r}
    return undo(y3), to_host(mean, host), to_host(rstd, host), saved


def backward(dy, cache):
    p, s = cache.params, cache.saved
    if not p["training"]:
        return batch_norm.backward(dy, cache)
    host = is_host(dy)
    dy3, undo = channels(dy, p["axis"], None)
    # Batch norm's gradient with the weight * r; its sums are sum(dy * xhat) and sum(dy).
    dx3, sum_dy_xhat, sum_dy = channelwise.grads(s["x3"], dy3, s["mean"], s["rstd"], s["w_r"], True, p["dtype"])
    dweight = dbias = None
    if p["weight"] is not None:
        dweight = empty(sum_dy.shape, sum_dy.dtype)
        if dweight.size:
            grid, block = flat_config(dweight.size)
            _weight_grad[grid, block](sum_dy_xhat, sum_dy, s["r"], s["d"], dweight)
        dweight = give(dweight, p["weight_dtype"], host)
    if p["bias"] is not None:
        dbias = give(sum_dy, p["bias_dtype"], host)
    return undo(dx3), dweight, dbias

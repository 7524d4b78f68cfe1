"""Layer norm on the GPU: the normalized axes become rows, one weight per element of a row."""
from . import rowwise
from ._arrays import give, is_host, rows, to_host

CENTER = True


def _kept_shape(shape, axes):
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def forward(x, p, center=CENTER):
    host = is_host(x)
    x2, undo = rows(x, p.axes, None)  # float16 stays float16: the kernels read it
    length = x2.shape[1]
    y2, mean, rstd, _ = rowwise.forward(x2, p.weight, getattr(p, "bias", None), 1, length, p.eps, center,
                                        p.dtype, p.cdtype)
    kept = _kept_shape(x.shape, p.axes)
    public_mean = to_host(mean.reshape(kept), host) if center else None
    return undo(y2), public_mean, to_host(rstd.reshape(kept), host), {"x2": x2, "mean": mean, "rstd": rstd}


def backward(dy, cache, center=CENTER):
    p, s = cache.params, cache.saved
    host = is_host(dy)
    dy2, undo = rows(dy, p["axes"], None)
    x2 = s["x2"]
    bias = p.get("bias")
    dx2, dweight, dbias = rowwise.backward(x2, dy2, p["weight"], 1, x2.shape[1], s["mean"], s["rstd"], center,
                                           p["dtype"], p["weight_dtype"] or p["cdtype"],
                                           p.get("bias_dtype") or p["cdtype"])
    shape = p["normalized_shape"]
    dweight = None if p["weight"] is None else give(dweight.reshape(shape), None, host)
    if not center:
        return undo(dx2), dweight
    return undo(dx2), dweight, None if bias is None else give(dbias.reshape(shape), None, host)

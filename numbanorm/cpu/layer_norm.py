"""Layer norm on the CPU: the normalized axes become rows, one weight per element of a row."""
from .._host import rows_view
from . import rowwise

CENTER = True


def _kept_shape(shape, axes):
    if axes[0] == len(shape) - len(axes):  # the trailing axes (sorted and distinct), the common call
        return shape[:axes[0]]
    return tuple([s for i, s in enumerate(shape) if i not in axes])


def forward(x, p, center=CENTER):
    x2, undo = rows_view(x, p.axes)
    y2, mean, rstd, _ = rowwise.forward(x2, p.weight, getattr(p, "bias", None), 1, x2.shape[1], p.eps, center)
    saved = {"x2": x2, "mean": mean, "rstd": rstd}
    kept = _kept_shape(x.shape, p.axes)
    if kept != mean.shape:  # (not for the rows of a 2-d x: a reshape costs as much as the check)
        mean, rstd = mean.reshape(kept), rstd.reshape(kept)
    # float64 statistics: the cache hands out copies in the compute dtype
    return undo(y2), mean if center else None, rstd, saved


def backward(dy, cache, center=CENTER):
    p, s = cache.params, cache.saved
    dy2, undo = rows_view(dy, p["axes"])
    x2 = s["x2"]
    dx2, dweight, dbias = rowwise.backward(x2, dy2, p["weight"], 1, x2.shape[1], s["mean"], s["rstd"], center,
                                           p["weight"] is not None, center and p["bias"] is not None)
    shape = p["normalized_shape"]
    dweight = None if p["weight"] is None else dweight.reshape(shape)
    if not center:
        return undo(dx2), dweight
    return undo(dx2), dweight, None if p["bias"] is None else dbias.reshape(shape)

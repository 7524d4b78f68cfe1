"""Weight norm of a (out, in) weight, one magnitude per output row."""
from ._common import _OpBenchmark, _VsTorch, op_params


class WeightNorm(_OpBenchmark):
    """``weight_norm_forward``/``_backward`` with ``axis=0``."""

    op = "weight_norm"
    params, param_names = op_params(op)


class WeightNormVsTorch(_VsTorch):
    """Against ``torch._weight_norm``."""

    op = "weight_norm"
    params, param_names = op_params(op)

"""Weight reparametrizations of a (out, in) weight: weight norm (one magnitude per output
row) and spectral norm."""
from ._common import _OpBenchmark, _VsTorch, op_params


class WeightNorm(_OpBenchmark):
    """``weight_norm_forward``/``_backward`` with ``axis=0``."""

    op = "weight_norm"
    params, param_names = op_params(op)


class WeightNormVsTorch(_VsTorch):
    """Against ``torch._weight_norm``."""

    op = "weight_norm"
    params, param_names = op_params(op)


class SpectralNorm(_OpBenchmark):
    """``spectral_norm_forward`` (one power iteration, u updated) and ``_backward``."""

    op = "spectral_norm"
    params, param_names = op_params(op)

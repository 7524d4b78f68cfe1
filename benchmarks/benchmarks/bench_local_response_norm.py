"""Local response normalization across 5 channels of an NCHW batch."""
from ._common import _OpBenchmark, _VsTorch, op_params


class LocalResponseNorm(_OpBenchmark):
    """``local_response_norm_forward``/``_backward`` with size 5."""

    op = "local_response_norm"
    params, param_names = op_params(op)


class LocalResponseNormVsTorch(_VsTorch):
    """Against ``F.local_response_norm``."""

    op = "local_response_norm"
    params, param_names = op_params(op)

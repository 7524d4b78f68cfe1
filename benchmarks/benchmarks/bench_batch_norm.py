"""Batch norm (training: batch statistics, running statistics updated), NCHW and NHWC."""
from ._common import _OpBenchmark, _VsTorch, op_params


class BatchNorm(_OpBenchmark):
    """``batch_norm_forward``/``_backward`` with weight, bias and running statistics."""

    op = "batch_norm"
    params, param_names = op_params(op)


class BatchNormVsTorch(_VsTorch):
    """Against ``F.batch_norm(training=True)`` (channels_last memory for NHWC)."""

    op = "batch_norm"
    params, param_names = op_params(op)


class BatchRenorm(_OpBenchmark):
    """``batch_renorm_forward``/``_backward``, training, with clipping bounds rmax=1.5, dmax=0.5."""

    op = "batch_renorm"
    params, param_names = op_params(op)

"""Group norm and instance norm (per-sample statistics over channel groups / channels), NCHW and NHWC."""
from ._common import _OpBenchmark, _VsTorch, op_params


class GroupNorm(_OpBenchmark):
    """``group_norm_forward``/``_backward`` with weight and bias; 8 groups (small), 32 (large)."""

    op = "group_norm"
    params, param_names = op_params(op)


class InstanceNorm(_OpBenchmark):
    """``instance_norm_forward``/``_backward`` with weight and bias, input statistics."""

    op = "instance_norm"
    params, param_names = op_params(op)


class GroupNormVsTorch(_VsTorch):
    """Against ``F.group_norm`` (channels_last memory for NHWC)."""

    op = "group_norm"
    params, param_names = op_params(op)


class InstanceNormVsTorch(_VsTorch):
    """Against ``F.instance_norm`` (channels_last memory for NHWC)."""

    op = "instance_norm"
    params, param_names = op_params(op)

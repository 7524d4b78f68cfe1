"""Layer norm and RMS norm over the last axis of (tokens, features), the per-call
overhead on a tiny input, and the cost of importing numbanorm and compiling its kernels."""
from ._common import (BACKENDS, SMOKE, _OpBenchmark, _VsTorch, bench, first_call_code, make_run, op_params,
                      warm_cache_dir)


class LayerNorm(_OpBenchmark):
    """``layer_norm_forward``/``_backward`` with weight and bias over the last axis."""

    op = "layer_norm"
    params, param_names = op_params(op)


class RMSNorm(_OpBenchmark):
    """``rms_norm_forward``/``_backward`` with weight over the last axis."""

    op = "rms_norm"
    params, param_names = op_params(op)


class LayerNormVsTorch(_VsTorch):
    """Against ``F.layer_norm``."""

    op = "layer_norm"
    params, param_names = op_params(op)


class RMSNormVsTorch(_VsTorch):
    """Against ``F.rms_norm`` (torch >= 2.4)."""

    op = "rms_norm"
    params, param_names = op_params(op)


class LayerNormCallOverhead:
    """Per-call overhead: layer norm of a tiny (32, 64) float32 input, where the work is nothing."""

    params = [list(BACKENDS)]
    param_names = ["backend"]
    shape = "x".join(map(str, bench.TINY))

    def setup(self, backend):
        self.run = make_run("layer_norm", self.shape, "float32", backend)

    def time_forward(self, backend):
        self.run.forward()

    def time_backward(self, backend):
        self.run.backward()


class ImportAndFirstCall:
    """``import numbanorm`` and a first forward + backward in a fresh interpreter (cpu, float32).

    ``cold``: an empty Numba cache (every kernel compiles); ``warm``: the on-disk
    cache already filled by an earlier process.
    """

    params = [["layer_norm"] if SMOKE else list(bench.OPS)]
    param_names = ["op"]
    number = 1
    repeat = (1, 3, 30.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 600.0

    def setup(self, op):
        bench.check_backend("cpu")

    def timeraw_cold(self, op):
        return first_call_code(op, None)

    def timeraw_warm(self, op):
        # Untimed: asv times only the code returned, in the child process.
        return first_call_code(op, warm_cache_dir(op))

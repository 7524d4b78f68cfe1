"""The sizes NumPy training code runs at (``python -m numbanorm bench --size train``):
batches of 32-256 by 64-1024 features and small feature maps, where the Python around a
kernel weighs as much as the kernel. Per case and shape: forward and backward time on
the cpu backend, and the time over the hand-written NumPy a user has today
(``numbanorm/_handwritten.py``) and over PyTorch's functional op (skipped without torch)."""
from ._common import SMOKE, TORCH_UNIT, bench, prepared

CASES = [c for c in bench.CASES if c.op in ("batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm")]
SHAPES = list(dict.fromkeys(label for c in CASES for label in c.sizes("train")))
if SMOKE:
    CASES, SHAPES = CASES[:1], CASES[0].sizes("train")[:1]
HAND_UNIT = "time over hand-written NumPy's"


def _prepare(case_name, shape):
    case = next(c for c in CASES if c.name == case_name)
    if shape not in case.sizes("train"):
        raise NotImplementedError(f"{shape} is not a training shape of {case_name}")

    def make():
        run = bench.Run(case, shape, "float32", "cpu").warm()
        hand = bench.HandRun(run).warm()
        torch = bench.TorchRun(run).warm() if bench.torch_available() else None
        return run, hand, torch
    return prepared(("train", case_name, shape), make)


class TrainingSizes:
    """Forward and backward time, and over the hand-written NumPy's (each side timed alone)."""

    params = [[c.name for c in CASES], SHAPES]
    param_names = ["case", "shape"]
    timeout = 120.0

    def setup(self, case, shape):
        self.run, self.hand, self.torch = _prepare(case, shape)

    def time_forward(self, case, shape):
        self.run.forward()

    def time_backward(self, case, shape):
        self.run.backward()

    def _over_hand(self, direction):
        bench.settle("cpu")
        ours = bench.time_alone(self.run, direction, bench.SMALL_COMPARE_REPEAT)
        return ours / self.hand.time(direction, bench.SMALL_COMPARE_REPEAT)

    def track_forward_time_over_hand(self, case, shape):
        return self._over_hand("forward")

    track_forward_time_over_hand.unit = HAND_UNIT

    def track_backward_time_over_hand(self, case, shape):
        return self._over_hand("backward")

    track_backward_time_over_hand.unit = HAND_UNIT


class TrainingSizesVsTorch:
    """Time over PyTorch's functional op (skipped without torch: asv's own environments)."""

    params, param_names = TrainingSizes.params, TrainingSizes.param_names
    timeout = 120.0

    def setup(self, case, shape):
        if not bench.torch_available():
            raise NotImplementedError("torch is not installed")
        self.run, _, self.torch = _prepare(case, shape)

    def track_forward_time_over_torch(self, case, shape):
        return bench.time_over_torch(self.run, self.torch, "forward", bench.SMALL_COMPARE_REPEAT)

    track_forward_time_over_torch.unit = TORCH_UNIT

    def track_backward_time_over_torch(self, case, shape):
        return bench.time_over_torch(self.run, self.torch, "backward", bench.SMALL_COMPARE_REPEAT)

    track_backward_time_over_torch.unit = TORCH_UNIT

"""What one call of the cuda backend costs on the host side, counted in the CUDA simulator.

A training loop on device arrays should, from its second step on, only launch
kernels: no copy between host and device, no synchronization, no allocation
(every buffer comes back from the pool). Hooks on the simulator count, per call:

- launches: numbanorm kernels launched (``FakeCUDAKernel.__call__``);
- copies: ``cuda.to_device``, ``copy_to_host``, ``copy_to_device``, a host array
  passed to a kernel (copied in and out), a scalar read or write of a device array
  from host code;
- syncs: ``cuda.synchronize`` and stream or event ``synchronize``;
- allocs: ``cuda.device_array``/``device_array_like``/``to_device`` and the
  device pool's misses.

The launch counts are exact: a change that adds or removes a launch must update
LAUNCHES on purpose. Host running statistics are the one case that copies, by
design (the caller keeps them on the host, so the update is made there): its
copies are counted exactly too (HOST_COPIES).
"""
from __future__ import annotations

import collections

import numpy as np
import pytest

import numbanorm as nbn
from _helpers import backward, forward, make_params, rng_for

if "cuda" not in nbn.available_backends():
    pytest.skip("the cuda backend is not available (no GPU, NUMBA_ENABLE_CUDASIM unset)",
                allow_module_level=True)

from numba import config, cuda  # noqa: E402  (only once the backend is known to work)

if not config.ENABLE_CUDASIM:
    pytest.skip("the counting hooks patch the CUDA simulator (NUMBA_ENABLE_CUDASIM=1)", allow_module_level=True)

from numba.cuda.simulator import kernel as sim_kernel  # noqa: E402
from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray  # noqa: E402

from numbanorm._pool import pool_report  # noqa: E402

pytestmark = pytest.mark.cuda

Case = collections.namedtuple("Case", "id op shape kw affine running dtype on_host", defaults=((),))
CASES = [
    Case("layer_norm", "layer_norm", (4, 3, 8), dict(axis=-1), "wb", False, np.float32),
    Case("layer_norm-2axes", "layer_norm", (2, 3, 4, 5), dict(axis=(1, 3)), "wb", False, np.float32),
    Case("layer_norm-float16", "layer_norm", (4, 8), dict(), "wb", False, np.float16),
    Case("rms_norm", "rms_norm", (4, 8), dict(), "w", False, np.float32),
    Case("group_norm", "group_norm", (2, 4, 6), dict(num_groups=2), "wb", False, np.float32),
    Case("instance_norm", "instance_norm", (2, 3, 6), dict(), "wb", False, np.float32),
    Case("instance_norm-running", "instance_norm", (2, 3, 6), dict(), "wb", True, np.float32),
    Case("batch_norm-train", "batch_norm", (4, 3, 5), dict(training=True), "wb", True, np.float32),
    Case("batch_norm-train-last", "batch_norm", (6, 5, 3), dict(training=True, axis=-1), "wb", True, np.float32),
    Case("batch_norm-eval", "batch_norm", (4, 3, 5), dict(training=False), "wb", True, np.float32),
    Case("batch_norm-train-host-running", "batch_norm", (4, 3, 5), dict(training=True), "wb", True, np.float32,
         on_host=("running_mean", "running_var")),
]

# Most kernel launches per call, (forward, backward): the counts measured in the simulator
# when this was written (in the comment), plus one of margin.
LAUNCHES = {  # (forward, backward)
    "layer_norm": (1, 2),
    "layer_norm-2axes": (2, 3),        # x and dy permuted on the device
    "layer_norm-float16": (1, 2),      # the kernels read float16 themselves, no cast pass
    "rms_norm": (1, 2),
    "group_norm": (1, 2),
    "instance_norm": (1, 2),
    "instance_norm-running": (3, 2),   # two running-statistics updates
    "batch_norm-train": (4, 3),        # moments, merge, running update, normalize; sums, column sums, dx
    "batch_norm-train-last": (4, 3),
    "batch_norm-eval": (3, 3),         # mean copied for the cache, rstd, normalize
    "batch_norm-train-host-running": (3, 3),  # the running statistics updated on the host
}

# Device-to-host copies a call makes by design, (forward, backward); 0 for every other case.
HOST_COPIES = {
    "batch_norm-train-host-running": (2, 0),  # the batch mean and std, for the update on the host
}


class Counter:
    """What the host side did since the last :meth:`take`."""

    def __init__(self):
        self.events = collections.Counter()
        self._misses = self._pool_misses()

    @staticmethod
    def _pool_misses():
        return sum(s["misses"] for label, s in pool_report().items() if label.startswith("cuda"))

    def take(self):
        misses = self._pool_misses()
        counts = dict(launches=self.events["launches"], copies=self.events["copies"], syncs=self.events["syncs"],
                      allocs=self.events["allocs"] + misses - self._misses)
        self.events.clear()
        self._misses = misses
        return counts


@pytest.fixture
def counter(monkeypatch):
    c = Counter()

    def counting(original, *kinds):
        def wrapper(*args, **kwargs):
            c.events.update(kinds)
            return original(*args, **kwargs)
        return wrapper

    def on_host():
        return sim_kernel._kernel_context is None  # not a thread of a simulated kernel

    launch = sim_kernel.FakeCUDAKernel.__call__

    def counting_launch(self, *args):
        if not self._device and on_host() and self.fn.__module__.startswith("numbanorm."):
            c.events["launches"] += 1
            c.events["copies"] += 2 * sum(isinstance(a, np.ndarray) and a.ndim > 0 for a in args)
        return launch(self, *args)

    get_item, set_item = FakeCUDAArray.__getitem__, FakeCUDAArray.__setitem__

    def counting_get(self, idx):
        value = get_item(self, idx)
        if on_host() and not isinstance(value, FakeCUDAArray):
            c.events["copies"] += 1  # a scalar read back: a copy and a wait on a GPU
        return value

    def counting_set(self, idx, value):
        if on_host():
            c.events["copies"] += 1
        return set_item(self, idx, value)

    monkeypatch.setattr(sim_kernel.FakeCUDAKernel, "__call__", counting_launch)
    monkeypatch.setattr(FakeCUDAArray, "__getitem__", counting_get)
    monkeypatch.setattr(FakeCUDAArray, "__setitem__", counting_set)
    for name in ("copy_to_host", "copy_to_device"):
        monkeypatch.setattr(FakeCUDAArray, name, counting(getattr(FakeCUDAArray, name), "copies"))
    monkeypatch.setattr(cuda, "to_device", counting(cuda.to_device, "copies", "allocs"))
    for name in ("device_array", "device_array_like"):
        monkeypatch.setattr(cuda, name, counting(getattr(cuda, name), "allocs"))
    monkeypatch.setattr(cuda, "synchronize", counting(cuda.synchronize, "syncs"))
    for cls in (type(cuda.stream()), type(cuda.event())):
        monkeypatch.setattr(cls, "synchronize", counting(cls.synchronize, "syncs"))
    c.take()
    return c


def _device_inputs(c):
    """x, dy and the keyword arguments, every array on the device but those ``c.on_host`` names."""
    rng = rng_for("host-path", c.id)
    x = (0.5 + 2.0 * rng.standard_normal(c.shape)).astype(c.dtype)
    dy = rng.standard_normal(c.shape).astype(c.dtype)
    kw = make_params(rng, c.op, c.shape, c.kw, c.affine, c.running, c.dtype)
    kw = {k: cuda.to_device(v) if isinstance(v, np.ndarray) and k not in c.on_host else v for k, v in kw.items()}
    return cuda.to_device(x), cuda.to_device(dy), kw


def _steps(c, counter, steps=3):
    """Counts of the forward and backward of every step after the first (outputs dropped in between)."""
    x, dy, kw = _device_inputs(c)
    counts = []
    counter.take()
    for step in range(steps):
        y, cache = forward(c.op, x, **kw)
        fwd = counter.take()
        grads = backward(c.op, dy, cache)
        bwd = counter.take()
        del y, cache, grads  # the pool hands their buffers to the next step
        if step:
            counts.append((fwd, bwd))
    print(f"{c.id}: forward {counts[0][0]}, backward {counts[0][1]}")
    return counts


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_later_steps_copy_synchronize_and_allocate_nothing(c, counter):
    for fwd, bwd in _steps(c, counter):
        for phase, counts, copies in (("forward", fwd, HOST_COPIES.get(c.id, (0, 0))[0]),
                                      ("backward", bwd, HOST_COPIES.get(c.id, (0, 0))[1])):
            nothing = {k: counts[k] for k in ("copies", "syncs", "allocs")}
            assert nothing == dict(copies=copies, syncs=0, allocs=0), f"{c.id} {phase}: {counts}"


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_launches_per_call_are_as_counted(c, counter):
    for fwd, bwd in _steps(c, counter, steps=2):
        launches = fwd["launches"], bwd["launches"]
        assert launches == LAUNCHES[c.id], f"{c.id}: launches (forward, backward) {launches}, expected {LAUNCHES[c.id]}"


def test_host_parameters_are_uploaded_once_and_again_after_an_update(counter):
    rng = rng_for("host-path", "host-params")
    x = cuda.to_device(rng.standard_normal((4, 8)).astype(np.float32))
    weight = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    nbn.layer_norm(x, weight=weight, bias=bias)   # first call: uploads both
    counter.take()
    nbn.layer_norm(x, weight=weight, bias=bias)
    assert counter.take()["copies"] == 0
    weight -= 0.25                                 # an optimizer step, in place
    y = nbn.layer_norm(x, weight=weight, bias=bias)
    counts = counter.take()
    assert counts["copies"] == 1 and counts["allocs"] == 0, counts
    expected = nbn.layer_norm(x.copy_to_host(), weight=weight, bias=bias, backend="numpy")
    np.testing.assert_allclose(y.copy_to_host(), expected, rtol=1e-5, atol=1e-5)

"""The layers under test: how to build each one, its input, PyTorch's state-dict keys, and the
functional call it must reproduce (written out by hand from the layer's state dict)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numbanorm as nbn
from numbanorm import layers as L

@dataclass(frozen=True)
class Case:
    """``make(**kw)`` builds the layer; ``shape`` is its input's (None for weight wrappers);
    ``keys`` are PyTorch's state-dict keys with their shapes; ``call(inputs, s, training, backend)``
    runs the functional forward on the state dict ``s`` (buffers in it updated in place) and
    ``grads`` names the parameters of the functional backward's gradients after dx."""
    make: object
    shape: tuple | None
    keys: dict
    call: object
    grads: tuple
    backward: object


def _bn_keys(c, affine=True, track=True):
    keys = {"weight": (c,), "bias": (c,)} if affine else {}
    if track:
        keys.update(running_mean=(c,), running_var=(c,), num_batches_tracked=())
    return keys


def _channel_kwargs(s, momentum=0.1, eps=1e-5, axis=1):
    return dict(weight=s.get("weight"), bias=s.get("bias"), running_mean=s.get("running_mean"),
                running_var=s.get("running_var"), num_batches_tracked=s.get("num_batches_tracked"),
                momentum=momentum, eps=eps, axis=axis)


def _bn_call(x, s, training, backend, **kw):
    track = "running_mean" in s
    return nbn.batch_norm_forward(x, training=training or not track, backend=backend, **_channel_kwargs(s, **kw))


def _renorm_call(x, s, training, backend):
    # The cases below build BatchRenorm with schedules over steps (0, 4) and (0, 8), at step 2.
    step = int(s["step"])
    rmax, dmax = 1.0 + 2.0 * min(step, 4) / 4, 5.0 * min(step, 8) / 8
    out = nbn.batch_renorm_forward(x, training=training, rmax=rmax, dmax=dmax, backend=backend,
                                   **_channel_kwargs(s))
    if training:
        s["step"] += 1
    return out


def _in_call(x, s, training, backend):
    track = "running_mean" in s
    return nbn.instance_norm_forward(x, use_input_stats=training or not track, backend=backend,
                                     **_channel_kwargs(s))


def _sn_call(x, s, training, backend):
    u = s["weight_u"].copy()
    out = nbn.spectral_norm_forward(s["weight_orig"], s["weight_u"], training=training, backend=backend)
    if training:  # one power iteration: v = normalize(W^T u) from the u it started with
        v = s["weight_orig"].reshape(len(u), -1).T @ u
        s["weight_v"][...] = v / np.linalg.norm(v)
    return out


def _renorm(cls):
    def make(**kw):
        layer = cls(3, rmax_steps=(0, 4), dmax_steps=(0, 8), **kw)
        layer.buffers["step"][...] = 2
        return layer
    return make


CASES = {
    "BatchNorm1d": Case(lambda **kw: L.BatchNorm1d(3, **kw), (6, 3), _bn_keys(3), _bn_call, ("weight", "bias"),
                        nbn.batch_norm_backward),
    "BatchNorm1d-3d": Case(lambda **kw: L.BatchNorm1d(3, **kw), (4, 3, 2), _bn_keys(3), _bn_call, ("weight", "bias"),
                           nbn.batch_norm_backward),
    "BatchNorm2d": Case(lambda **kw: L.BatchNorm2d(3, **kw), (2, 3, 2, 2), _bn_keys(3), _bn_call,
                        ("weight", "bias"), nbn.batch_norm_backward),
    "BatchNorm2d-channels-last": Case(lambda **kw: L.BatchNorm2d(3, axis=-1, **kw), (2, 2, 2, 3), _bn_keys(3),
                                      lambda x, s, t, b: _bn_call(x, s, t, b, axis=-1), ("weight", "bias"),
                                      nbn.batch_norm_backward),
    "BatchNorm2d-cumulative": Case(lambda **kw: L.BatchNorm2d(3, momentum=None, **kw), (2, 3, 2, 2), _bn_keys(3),
                                   lambda x, s, t, b: _bn_call(x, s, t, b, momentum=None), ("weight", "bias"),
                                   nbn.batch_norm_backward),
    "BatchNorm3d": Case(lambda **kw: L.BatchNorm3d(3, **kw), (2, 3, 2, 2, 1), _bn_keys(3), _bn_call,
                        ("weight", "bias"), nbn.batch_norm_backward),
    "BatchNorm2d-no-affine": Case(lambda **kw: L.BatchNorm2d(3, affine=False, **kw), (2, 3, 2, 2),
                                  _bn_keys(3, affine=False), _bn_call, ("weight", "bias"), nbn.batch_norm_backward),
    "BatchNorm1d-no-stats": Case(lambda **kw: L.BatchNorm1d(3, track_running_stats=False, **kw), (6, 3),
                                 _bn_keys(3, track=False), _bn_call, ("weight", "bias"), nbn.batch_norm_backward),
    "BatchRenorm1d": Case(_renorm(L.BatchRenorm1d), (6, 3), {**_bn_keys(3), "step": ()}, _renorm_call,
                          ("weight", "bias"), nbn.batch_renorm_backward),
    "BatchRenorm2d": Case(_renorm(L.BatchRenorm2d), (2, 3, 2, 2), {**_bn_keys(3), "step": ()}, _renorm_call,
                          ("weight", "bias"), nbn.batch_renorm_backward),
    "BatchRenorm3d": Case(_renorm(L.BatchRenorm3d), (2, 3, 2, 1, 2), {**_bn_keys(3), "step": ()}, _renorm_call,
                          ("weight", "bias"), nbn.batch_renorm_backward),
    "InstanceNorm1d": Case(lambda **kw: L.InstanceNorm1d(3, **kw), (2, 3, 4), {}, _in_call, ("weight", "bias"),
                           nbn.instance_norm_backward),
    "InstanceNorm2d-affine-stats": Case(
        lambda **kw: L.InstanceNorm2d(3, affine=True, track_running_stats=True, **kw), (2, 3, 2, 2), _bn_keys(3),
        _in_call, ("weight", "bias"), nbn.instance_norm_backward),
    "InstanceNorm3d": Case(lambda **kw: L.InstanceNorm3d(3, affine=True, **kw), (2, 3, 2, 1, 2),
                           _bn_keys(3, track=False), _in_call, ("weight", "bias"), nbn.instance_norm_backward),
    "LayerNorm": Case(lambda **kw: L.LayerNorm((3, 4), **kw), (2, 3, 4), {"weight": (3, 4), "bias": (3, 4)},
                      lambda x, s, t, b: nbn.layer_norm_forward(x, weight=s["weight"], bias=s["bias"], axis=(1, 2),
                                                                backend=b),
                      ("weight", "bias"), nbn.layer_norm_backward),
    "LayerNorm-no-bias-axis1": Case(lambda **kw: L.LayerNorm(3, bias=False, axis=1, **kw), (2, 3, 4),
                                    {"weight": (3,)},
                                    lambda x, s, t, b: nbn.layer_norm_forward(x, weight=s["weight"], axis=1,
                                                                              backend=b),
                                    ("weight", "bias"), nbn.layer_norm_backward),
    "RMSNorm": Case(lambda **kw: L.RMSNorm(4, **kw), (3, 4), {"weight": (4,)},
                    lambda x, s, t, b: nbn.rms_norm_forward(x, weight=s["weight"], backend=b), ("weight",),
                    nbn.rms_norm_backward),
    "GroupNorm": Case(lambda **kw: L.GroupNorm(2, 4, **kw), (2, 4, 3), {"weight": (4,), "bias": (4,)},
                      lambda x, s, t, b: nbn.group_norm_forward(x, 2, weight=s["weight"], bias=s["bias"], backend=b),
                      ("weight", "bias"), nbn.group_norm_backward),
    "LocalResponseNorm": Case(lambda **kw: L.LocalResponseNorm(3, alpha=0.5, **kw), (2, 4, 3), {},
                              lambda x, s, t, b: nbn.local_response_norm_forward(x, 3, alpha=0.5, backend=b), (),
                              nbn.local_response_norm_backward),
    "WeightNorm": Case(lambda **kw: L.WeightNorm(np.arange(1, 13, dtype=np.float32).reshape(4, 3), **kw), None,
                       {"weight_g": (4, 1), "weight_v": (4, 3)},
                       lambda x, s, t, b: nbn.weight_norm_forward(s["weight_v"], s["weight_g"], backend=b),
                       ("weight_v", "weight_g"), nbn.weight_norm_backward),
    "WeightNorm-dim-None": Case(lambda **kw: L.WeightNorm(np.arange(1, 7, dtype=np.float32).reshape(2, 3), dim=None, **kw), None,
                                {"weight_g": (), "weight_v": (2, 3)},
                                lambda x, s, t, b: nbn.weight_norm_forward(s["weight_v"], s["weight_g"], axis=None,
                                                                           backend=b),
                                ("weight_v", "weight_g"), nbn.weight_norm_backward),
    "SpectralNorm": Case(lambda **kw: L.SpectralNorm(np.arange(24, dtype=np.float32).reshape(4, 3, 2) % 5, rng=0, **kw), None,
                         {"weight_orig": (4, 3, 2), "weight_u": (4,), "weight_v": (6,)},
                         _sn_call,
                         ("weight_orig",), nbn.spectral_norm_backward),
}

def randomized(layer, seed=0):
    """``layer`` with random parameters and running statistics (weights near one, variances positive)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, a in layer.state_dict().items():
        if a.dtype.kind in "iu" or key.endswith(("_u", "_v")) and key in layer.buffers:
            continue
        if key in ("running_var", "weight") or key.endswith("_g"):
            state[key] = rng.uniform(0.5, 1.5, a.shape)
        else:
            state[key] = rng.standard_normal(a.shape)
    layer.load_state_dict(state, strict=False)
    return layer


def inputs(case, seed=1):
    """``(x,)`` (or ``()`` for weight wrappers) and a gradient for the output."""
    rng = np.random.default_rng(seed)
    if case.shape is None:
        return (), None
    x = (rng.standard_normal(case.shape) + 0.5).astype(np.float32)
    return (x,), rng.standard_normal(case.shape).astype(np.float32)


def host(a):
    return a if a is None or isinstance(a, np.ndarray) else a.copy_to_host()

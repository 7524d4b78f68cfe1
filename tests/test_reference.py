"""The reference ("numpy") backend's gradients against central finite differences.

The loss is a random linear functional ``L = sum(y * r)``, so ``dL/dy = r`` and
the analytic gradients are ``OP_backward(r, cache)``. Everything is float64.
"""
from __future__ import annotations

import numpy as np
import pytest

from _helpers import GRAD_NAMES, backward, copy_kwargs, forward, make_params, rng_for

H = 1e-5

FD_CASES = [
    ("bn-train", "batch_norm", (3, 2, 4), dict(training=True)),
    ("bn-train-last", "batch_norm", (3, 4, 2), dict(training=True, axis=-1)),
    ("bn-train-running", "batch_norm", (2, 3, 3), dict(training=True, running=True)),
    ("bn-eval", "batch_norm", (2, 3, 4), dict(training=False, running=True)),
    ("ln-last", "layer_norm", (2, 3, 4), dict(axis=-1)),
    ("ln-13", "layer_norm", (2, 3, 2, 3), dict(axis=(1, 3))),
    ("ln-all", "layer_norm", (2, 3, 4), dict(axis=(1, 2))),
    ("rms-last", "rms_norm", (2, 3, 4), dict()),
    ("rms-12", "rms_norm", (2, 3, 4), dict(axis=(1, 2), eps=1e-3)),
    ("gn-G1", "group_norm", (2, 4, 3), dict(num_groups=1)),
    ("gn-G2", "group_norm", (2, 4, 3), dict(num_groups=2)),
    ("gn-G4", "group_norm", (2, 4, 3), dict(num_groups=4)),
    ("gn-G2-last", "group_norm", (2, 3, 4), dict(num_groups=2, axis=-1)),
    ("in-input", "instance_norm", (2, 3, 4), dict()),
    ("in-input-running", "instance_norm", (2, 3, 4), dict(running=True)),
    ("in-running-stats", "instance_norm", (2, 3, 4), dict(use_input_stats=False, running=True)),
    ("in-last", "instance_norm", (2, 4, 3), dict(axis=-1)),
]


def _fd_gradient(loss, a):
    """Central differences of ``loss()`` with respect to every element of ``a`` (perturbed in place)."""
    grad = np.zeros(a.shape)
    for idx in np.ndindex(a.shape):
        orig = a[idx]
        a[idx] = orig + H
        plus = loss()
        a[idx] = orig - H
        minus = loss()
        a[idx] = orig
        grad[idx] = (plus - minus) / (2 * H)
    return grad


def _rel_error(analytic, numeric):
    return np.linalg.norm(analytic - numeric) / max(np.linalg.norm(numeric), 1e-300)


@pytest.mark.parametrize("affine", ["wb", ""])
@pytest.mark.parametrize("name, op, shape, kw", FD_CASES, ids=[c[0] for c in FD_CASES])
def test_reference_gradients_match_finite_differences(name, op, shape, kw, affine):
    kw = dict(kw)
    running = kw.pop("running", False)
    rng = rng_for("fd", name, affine)
    x = 1.0 + 1.5 * rng.standard_normal(shape)
    r = rng.standard_normal(shape)
    params = make_params(rng, op, shape, kw, affine, running, np.float64)

    def loss():
        # fresh copies of running stats: the forward may update them in place
        y, _ = forward(op, x, "numpy", **copy_kwargs(params))
        return float(np.sum(y * r))

    _, cache = forward(op, x, "numpy", **copy_kwargs(params))
    grads = dict(zip(GRAD_NAMES[op], backward(op, r, cache)))

    checked = {"dx": x}
    for p in ("weight", "bias"):
        if p in params:
            checked["d" + p] = params[p]
        else:
            assert grads.get("d" + p) is None
    for gname, arr in checked.items():
        numeric = _fd_gradient(loss, arr)
        analytic = grads[gname]
        assert analytic.shape == arr.shape and analytic.dtype == np.float64
        assert np.linalg.norm(numeric) > 1e-3  # the check has something to measure
        err = _rel_error(analytic, numeric)
        assert err < 1e-6, f"{gname}: relative error {err:.2e}"
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6 * np.abs(numeric).max(),
                                   err_msg=gname)


@pytest.mark.parametrize("op, kw", [("batch_norm", dict(training=False)),
                                    ("instance_norm", dict(use_input_stats=False))])
def test_reference_eval_gradient_is_pure_scaling(op, kw):
    """With fixed statistics, dx = dy * weight * rstd per channel, rstd = 1/sqrt(running_var + eps)."""
    shape = (3, 4, 5)
    rng = rng_for("eval-scaling", op)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    params = make_params(rng, op, shape, kw, "wb", True, np.float64)
    _, cache = forward(op, x, "numpy", **params)
    dx = backward(op, dy, cache)[0]
    scale = params["weight"] / np.sqrt(params["running_var"] + 1e-5)
    np.testing.assert_allclose(dx, dy * scale[None, :, None], rtol=1e-13, atol=1e-14)

"""float16 input computes in float32 and comes back as float16 for the issue-5 variants too."""
import numpy as np
import pytest

import numbanorm as nbn


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def _cases(rng):
    x = rng.standard_normal((4, 6, 3, 5))
    return [
        ("batch_renorm", (x,), dict(running_mean=np.zeros(6, np.float16), running_var=np.ones(6, np.float16),
                                    weight=np.ones(6, np.float16), bias=np.zeros(6, np.float16), training=True,
                                    rmax=1.5, dmax=0.5)),
        ("local_response_norm", (x, 3), dict(alpha=0.1, k=2.0)),
        ("spectral_norm", (x, rng.standard_normal(4).astype(np.float16)), dict()),
        ("weight_norm", (x, rng.standard_normal(4).astype(np.float16)), dict()),
    ]


@pytest.mark.parametrize("index", range(4), ids=["batch_renorm", "local_response_norm", "spectral_norm",
                                                  "weight_norm"])
def test_float16_in_float16_out_close_to_float64(backend, index):
    op, args, kwargs = _cases(np.random.default_rng(index))[index]
    half = (args[0].astype(np.float16),) + args[1:]
    copy = lambda kw: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}  # noqa: E731
    y, cache = getattr(nbn, op + "_forward")(*[a.copy() if isinstance(a, np.ndarray) else a for a in half],
                                               backend=backend, **copy(kwargs))
    grads = getattr(nbn, op + "_backward")(np.ones(half[0].shape, np.float16), cache)
    wide = [a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in half]
    y64, cache64 = getattr(nbn, op + "_forward")(*wide, backend="numpy",
                                                 **{k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v)
                                                    for k, v in kwargs.items()})
    grads64 = getattr(nbn, op + "_backward")(np.ones(half[0].shape), cache64)
    assert _host(y).dtype == np.float16 and _host(grads[0]).dtype == np.float16
    for a, b in zip((y, *grads), (y64, *grads64)):
        if b is None:
            continue
        a, b = _host(a).astype(np.float64), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=5e-3, atol=5e-3 * max(1.0, float(np.abs(b).max())))

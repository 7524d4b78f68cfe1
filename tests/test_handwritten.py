"""The hand-written NumPy that ``bench`` times ours against computes the same thing as ours."""
import numpy as np
import pytest

import numbanorm as nbn
from numbanorm import _bench
from numbanorm._handwritten import Handwritten


@pytest.mark.parametrize("case", [c for c in _bench.CASES if c.op in Handwritten.OPS], ids=lambda c: c.name)
def test_handwritten_numpy_agrees_with_the_reference(case):
    x, dy, args, kwargs = _bench.host_inputs(case, "tiny", "float64")
    mine = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    theirs = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    hand = Handwritten(case.op, x, args, theirs)
    y, cache = hand.forward(x)
    y_ref, cache_ref = getattr(nbn, case.op + "_forward")(x, *args, backend="numpy", **mine)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(hand.backward(dy, cache), getattr(nbn, case.op + "_backward")(dy, cache_ref)):
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    for name in ("running_mean", "running_var"):
        if name in mine:
            np.testing.assert_allclose(theirs[name], mine[name], rtol=1e-12, atol=1e-14)

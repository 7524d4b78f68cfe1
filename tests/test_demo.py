"""The demo (``python -m numbanorm demo``): its NumPy pieces' gradients, and a reduced run end to end."""
import re

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the demo needs scikit-learn: pip install -e '.[demo]'")
pytest.importorskip("matplotlib", reason="the demo needs matplotlib: pip install -e '.[demo]'")

from numbanorm.__main__ import main  # noqa: E402
from numbanorm import _demo as demo  # noqa: E402
from numbanorm._demo import nn  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def numerical_grad(f, a, eps=1e-6):
    """Central differences of the scalar ``f()`` with respect to every entry of ``a`` (changed in place)."""
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + eps
        up = f()
        a[i] = old - eps
        down = f()
        a[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("make, shape", [
    (lambda rng: nn.Conv2d(2, 3, 3, rng, stride=2, pad=1, dtype=np.float64), (2, 2, 5, 5)),
    (lambda rng: nn.Conv2d(2, 3, 3, rng, pad=1, bias=False, dtype=np.float64), (2, 2, 4, 4)),
    (lambda rng: nn.Linear(4, 3, rng, dtype=np.float64), (5, 4)),
    (lambda rng: nn.Sequential(nn.Linear(4, 3, np.random.default_rng(1), dtype=np.float64), nn.Sigmoid(),
                               nn.Linear(3, 2, np.random.default_rng(2), dtype=np.float64), nn.ReLU()), (5, 4)),
    (lambda rng: nn.Flatten(), (2, 3, 2)),
])
def test_pieces_backward_matches_finite_differences(make, shape):
    rng = np.random.default_rng(0)
    layer = make(rng)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(layer(x).shape)
    layer.zero_grad()
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, numerical_grad(lambda: float((layer(x) * dy).sum()), x), atol=1e-7)
    parts = layer.layers if isinstance(layer, nn.Sequential) else [layer]
    for part in parts:
        for name, p in part.params.items():
            expected = numerical_grad(lambda: float((layer(x) * dy).sum()), p)
            np.testing.assert_allclose(part.grads[name], expected, atol=1e-7, err_msg=name)


def test_grads_accumulate_until_zero_grad():
    rng = np.random.default_rng(0)
    layer = nn.Linear(4, 3, rng)
    x, dy = rng.standard_normal((5, 4)).astype(np.float32), np.ones((5, 3), np.float32)
    layer(x)
    layer.backward(dy)
    once = layer.grads["weight"].copy()
    layer.backward(dy)
    np.testing.assert_allclose(layer.grads["weight"], 2 * once, rtol=1e-6)
    layer.zero_grad()
    assert not layer.grads["weight"].any()


def test_softmax_cross_entropy_gradient():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((4, 3)), np.array([0, 2, 1, 1])
    loss, dlogits = nn.softmax_cross_entropy(logits, labels)
    assert loss == pytest.approx(-np.mean(np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
                                          [np.arange(4), labels]))
    np.testing.assert_allclose(dlogits, numerical_grad(lambda: nn.softmax_cross_entropy(logits, labels)[0],
                                                       logits), atol=1e-8)


def _one_step(build, backend, x, y):
    """The parameters (as host arrays) of a net built on ``backend`` after one SGD step on (x, y)."""
    net = build(np.random.default_rng(0), backend)
    net.train()
    net.zero_grad()
    _, dlogits = nn.softmax_cross_entropy(net(x), y)
    net.backward(dlogits)
    nn.SGD(net.layers, 0.5).step()
    return [np.asarray(p if isinstance(p, np.ndarray) else p.copy_to_host())
            for layer in net.layers for p in layer.params.values()]


@pytest.mark.parametrize("build, shape", [
    (lambda rng, backend: demo.mlp(True, rng, backend), (8, 64)),
    (lambda rng, backend: demo.convnet("batch", rng, backend), (2, 1, 8, 8)),
    (lambda rng, backend: demo.convnet("group", rng, backend), (2, 1, 8, 8)),
], ids=["mlp+BatchNorm1d", "conv+BatchNorm2d", "conv+GroupNorm"])
def test_a_training_step_is_the_same_on_every_backend(build, shape, backend):
    """--backend changes only where the layers compute (on cuda their parameters live on the device)."""
    rng = np.random.default_rng(1)
    x, y = rng.random(shape, dtype=np.float32), np.arange(shape[0]) % 10
    ours, reference = _one_step(build, backend, x, y), _one_step(build, "numpy", x, y)
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _finals(text):
    line = next(line for line in text.splitlines() if line.startswith("final test accuracy:"))
    return {name: float(value) for name, value in re.findall(r"(MLP [\w ]+?|conv [\w ()0-9]+?) (\d\.\d+)", line)}


def test_quick_demo_end_to_end(tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert main(["demo", "--quick", "--plot", str(png)]) == 0
    out = capsys.readouterr().out

    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size > 20_000          # four panels of curves, not an empty canvas
    # one line per epoch (0 = before training) for each experiment: epoch, step, an accuracy per model
    mlp_lines = re.findall(r"^ +(\d+) +(\d+) +(\d\.\d{3}) +(\d\.\d{3})$", out, re.M)
    conv_lines = re.findall(r"^ +(\d+) +(\d+) +(\d\.\d{3}) +(\d\.\d{3}) +(\d\.\d{3})$", out, re.M)
    assert [int(e) for e, *_ in mlp_lines] == list(range(16))
    assert [int(e) for e, *_ in conv_lines] == list(range(4))
    finals = _finals(out)
    assert set(finals) == {"MLP without BN", "MLP with BN", "conv no norm", "conv BatchNorm2d",
                           "conv GroupNorm(4)"}
    assert finals["MLP with BN"] == float(mlp_lines[-1][3])
    # Figure 1's point: at this learning rate the plain sigmoid MLP stalls, batch norm trains it.
    assert finals["MLP with BN"] >= 0.9
    assert finals["MLP with BN"] - finals["MLP without BN"] >= 0.3
    assert finals["conv BatchNorm2d"] >= 0.9 and finals["conv GroupNorm(4)"] >= 0.85
    # the closing kernel table
    assert re.search(r"^batch_norm +NCHW +8x32x32x32 +forward", out, re.M)
    assert re.search(r"^batch_norm +NCHW +8x32x32x32 +backward", out, re.M)


def test_demo_is_the_default_command_and_reproducible(capsys):
    args = ["--limit", "120", "--epochs", "3", "--conv-epochs", "1", "--no-bench", "--plot", ""]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(["demo", *args]) == 0
    second = capsys.readouterr().out
    assert "final test accuracy" in first
    assert _finals(first) == _finals(second)
    strip = [line for line in first.splitlines() if not line.startswith("done in")]
    assert strip == [line for line in second.splitlines() if not line.startswith("done in")]


def test_numpy_backend_trains_the_same_networks(capsys):
    args = ["--limit", "120", "--epochs", "3", "--conv-epochs", "1", "--no-bench", "--plot", ""]
    assert main([*args, "--backend", "numpy"]) == 0
    reference = _finals(capsys.readouterr().out)
    assert main([*args, "--backend", "cpu"]) == 0
    ours = _finals(capsys.readouterr().out)
    assert reference.keys() == ours.keys()
    for name in ours:   # float64 reference vs float32 kernels: the same predictions, give or take one image
        assert abs(ours[name] - reference[name]) <= 1 / 120 + 1e-9, name


@pytest.mark.parametrize("bad", [["--limit", "10"], ["--epochs", "0"], ["--conv-epochs", "-1"]])
def test_bad_arguments_exit_2(bad, capsys):
    assert main(["demo", "--no-bench", "--plot", "", *bad]) == 2
    assert "numbanorm demo:" in capsys.readouterr().err

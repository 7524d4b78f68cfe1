"""numbanorm.layers: state dicts (PyTorch's keys, round trips, errors, real torch modules) and to()."""
import numpy as np
import pytest
from _layer_cases import CASES, host, inputs, randomized

import numbanorm as nbn
from numbanorm import layers as L


def _trained(case):
    """A layer with random parameters that has run one training forward (counters non-zero)."""
    layer = randomized(case.make())
    x_inputs, _ = inputs(case)
    layer(*x_inputs)
    return layer


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_has_pytorchs_keys(name):
    case = CASES[name]
    sd = case.make().state_dict()
    assert list(sd) == list(case.keys), "PyTorch's keys, in PyTorch's order"
    for key, shape in case.keys.items():
        assert isinstance(sd[key], np.ndarray) and sd[key].shape == shape, key
        expected = np.int64 if key in ("num_batches_tracked", "step") else np.float32
        assert sd[key].dtype == expected, key


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_round_trip(name):
    case = CASES[name]
    a = _trained(case)
    sd = a.state_dict()
    b = case.make()
    assert b.load_state_dict(sd) == ([], [])
    for key, value in b.state_dict().items():
        np.testing.assert_array_equal(value, sd[key], err_msg=key)
    for key in sd:  # a snapshot: writing to it does not touch the layer
        sd[key][...] = 0
    assert not sd or any(np.any(x != 0) for x in a.state_dict().values())
    a.eval(), b.eval()
    x_inputs, _ = inputs(case, seed=5)
    np.testing.assert_array_equal(b(*x_inputs), a(*x_inputs))


def test_loads_a_pytorch_style_state_dict_built_by_hand():
    """What ``{k: v.numpy() for k, v in torch.nn.BatchNorm2d(3).state_dict().items()}`` gives."""
    sd = {"weight": np.array([1.5, 2.0, 0.5], np.float32), "bias": np.array([0.1, 0.2, 0.3], np.float32),
          "running_mean": np.array([1.0, -1.0, 0.0], np.float32), "running_var": np.array([4.0, 1.0, 0.25], np.float32),
          "num_batches_tracked": np.array(7, np.int64)}
    bn = L.BatchNorm2d(3)
    weight = bn.params["weight"]
    bn.load_state_dict(sd)
    assert bn.params["weight"] is weight, "loaded in place"
    assert int(bn.buffers["num_batches_tracked"]) == 7 and bn.buffers["num_batches_tracked"].shape == ()
    bn.eval()
    x = np.full((1, 3, 1, 1), 2.0, np.float32)
    expected = (2.0 - sd["running_mean"]) / np.sqrt(sd["running_var"] + 1e-5) * sd["weight"] + sd["bias"]
    np.testing.assert_allclose(bn(x).reshape(3), expected, rtol=1e-6)
    wn = L.WeightNorm(np.ones((2, 3), np.float32))
    wn.load_state_dict({"weight_g": np.array([[2.0], [3.0]]), "weight_v": np.array([[3.0, 0, 4], [0, 1, 0]])})
    np.testing.assert_allclose(wn(), [[1.2, 0, 1.6], [0, 3, 0]], rtol=1e-6)
    sn = L.SpectralNorm(np.ones((2, 3)))
    sn.load_state_dict({"weight_orig": np.diag([3.0, 1.0])[:, [0, 1, 1]] * [1, 1, 0],
                        "weight_u": np.array([1.0, 0.0]), "weight_v": np.array([1.0, 0.0, 0.0])})
    np.testing.assert_allclose(sn(), [[1, 0, 0], [0, 1 / 3, 0]], rtol=1e-6)


@pytest.mark.parametrize("edit, error, match", [
    (lambda sd: sd.pop("running_var"), ValueError, r"missing keys \['running_var'\], unexpected keys \[\]"),
    (lambda sd: sd.update(extra=np.zeros(3)), ValueError, r"unexpected keys \['extra'\]"),
    (lambda sd: sd.update(weight=np.zeros(4)), ValueError, r"size mismatch for 'weight'.*\(4,\).*\(3,\)"),
    (lambda sd: sd.update(running_mean=np.zeros((3, 1))), ValueError, "size mismatch for 'running_mean'"),
    (lambda sd: sd.update(num_batches_tracked=np.array([1, 2])), ValueError, "size mismatch"),
    (lambda sd: sd.update(num_batches_tracked=np.array(2.0)), TypeError, "expected an integer dtype"),
    (lambda sd: sd.update(bias=np.array(["a", "b", "c"])), TypeError, "'bias' has dtype <U1"),
    (lambda sd: sd.update(bias=np.zeros(3, complex)), TypeError, "expected a real dtype"),
    (lambda sd: sd.update(bias=object()), TypeError, "'bias' has dtype object"),
])
def test_load_state_dict_errors_change_nothing(edit, error, match):
    bn = randomized(L.BatchNorm1d(3))
    before = bn.state_dict()
    sd = {k: np.full_like(v, 9) for k, v in before.items()}  # every good key would change the layer
    edit(sd)
    with pytest.raises(error, match=match):
        bn.load_state_dict(sd)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_load_state_dict_not_strict():
    bn = L.BatchNorm1d(3)
    result = bn.load_state_dict({"weight": np.full(3, 2.0), "extra": np.zeros(1)}, strict=False)
    assert result.missing_keys == ["bias", "running_mean", "running_var", "num_batches_tracked"]
    assert result.unexpected_keys == ["extra"] and isinstance(result, L.IncompatibleKeys)
    np.testing.assert_array_equal(bn.params["weight"], 2.0)
    with pytest.raises(ValueError, match="size mismatch"):  # shapes are checked even when not strict
        bn.load_state_dict({"weight": np.zeros(2)}, strict=False)


# ----------------------------------------------------------------------------- real PyTorch modules

def _torch_pairs(torch):
    nn = torch.nn
    return [  # (ours, torch's, input shape; None for weight wrappers)
        (L.BatchNorm1d(3), nn.BatchNorm1d(3), (6, 3)),
        (L.BatchNorm2d(3, momentum=None), nn.BatchNorm2d(3, momentum=None), (2, 3, 2, 2)),
        (L.BatchNorm3d(3, affine=False), nn.BatchNorm3d(3, affine=False), (2, 3, 2, 1, 2)),
        (L.BatchNorm2d(3, track_running_stats=False), nn.BatchNorm2d(3, track_running_stats=False), (2, 3, 2, 2)),
        (L.InstanceNorm1d(3), nn.InstanceNorm1d(3), (2, 3, 4)),
        (L.InstanceNorm2d(3, affine=True, track_running_stats=True),
         nn.InstanceNorm2d(3, affine=True, track_running_stats=True), (2, 3, 2, 2)),
        (L.InstanceNorm3d(3, affine=True), nn.InstanceNorm3d(3, affine=True), (2, 3, 2, 1, 2)),
        (L.LayerNorm((3, 4)), nn.LayerNorm((3, 4)), (2, 3, 4)),
        (L.LayerNorm(4, bias=False), nn.LayerNorm(4, bias=False), (2, 3, 4)),
        (L.RMSNorm(4), nn.RMSNorm(4), (3, 4)),
        (L.GroupNorm(2, 4), nn.GroupNorm(2, 4), (2, 4, 3)),
        (L.LocalResponseNorm(3, alpha=0.5), nn.LocalResponseNorm(3, alpha=0.5), (2, 4, 3)),
    ]


def test_loads_real_pytorch_modules_and_computes_the_same():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    for ours, theirs, shape in _torch_pairs(torch):
        name = type(theirs).__name__
        with torch.no_grad():  # random parameters and running statistics, a few batches counted
            for key, t in theirs.state_dict().items():
                t.copy_(torch.randint(1, 9, ()) if t.dtype == torch.int64 else torch.rand(t.shape) + 0.5)
        ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for training in (True, False):
            ours.train(training), theirs.train(training)
            expected = theirs(torch.from_numpy(x)).detach().numpy()
            np.testing.assert_allclose(ours(x), expected, rtol=2e-5, atol=2e-5, err_msg=f"{name} training={training}")
        for key, t in theirs.state_dict().items():
            if key == "num_batches_tracked" and name.startswith("Instance"):
                continue  # PyTorch's InstanceNorm never counts; ours counts (momentum=None averages with it)
            np.testing.assert_allclose(ours.state_dict()[key], t.numpy(), rtol=2e-5, err_msg=f"{name} {key}")
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})  # and back
    bn, theirs = L.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        theirs.running_var.fill_(2.0)
    bn.load_state_dict(theirs.state_dict())  # CPU tensors load as they are
    np.testing.assert_array_equal(bn.buffers["running_var"], 2.0)


def test_loads_real_pytorch_weight_norm_and_spectral_norm():
    torch = pytest.importorskip("torch")
    import warnings
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        linear = torch.nn.utils.weight_norm(torch.nn.Linear(3, 4))
    with torch.no_grad():
        linear.weight_g.mul_(torch.rand(4, 1) + 0.5)
    sd = {k: v.numpy() for k, v in linear.state_dict().items() if k.startswith("weight_")}
    wn = L.WeightNorm(np.zeros((4, 3), np.float32))
    wn.load_state_dict(sd)
    linear(torch.zeros(1, 3))  # computes linear.weight from g and v
    np.testing.assert_allclose(wn(), linear.weight.detach().numpy(), rtol=1e-6)

    conv = torch.nn.utils.spectral_norm(torch.nn.Conv2d(3, 4, 2))
    sd = {k: v.numpy().copy() for k, v in conv.state_dict().items() if k.startswith("weight_")}
    sn = L.SpectralNorm(np.zeros((4, 3, 2, 2), np.float32))
    sn.load_state_dict(sd)
    conv(torch.zeros(1, 3, 2, 2))  # one power iteration in training mode, as ours
    np.testing.assert_allclose(sn(), conv.weight.detach().numpy(), rtol=1e-5, atol=1e-6)
    for key in ("weight_u", "weight_v"):
        np.testing.assert_allclose(sn.buffers[key], getattr(conv, key).numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- to()

def _cuda():
    if "cuda" not in nbn.available_backends():
        pytest.skip("the cuda backend is not available (NUMBA_ENABLE_CUDASIM=1 runs it in the simulator)")
    from numba import cuda
    return cuda


def _kinds(layer):
    return {key: isinstance(a, np.ndarray) for d in (layer.params, layer.grads, layer.buffers) for key, a in d.items()}


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(CASES))
def test_to_cuda_and_back(name):
    cuda = _cuda()
    case = CASES[name]
    layer = _trained(case)
    x_inputs, dy = inputs(case)
    y_host = layer(*x_inputs)
    dy = np.ones_like(y_host) if dy is None else dy
    layer.backward(dy)
    grads_host = {k: g.copy() for k, g in layer.grads.items()}
    state = layer.state_dict()
    layer.eval()  # no state changes from here: host and device results must agree

    assert layer.to("cuda") is layer and layer.backend == "cuda"
    for d in (layer.params, layer.grads):
        assert all(not isinstance(a, np.ndarray) for a in d.values())
    for key, a in layer.buffers.items():  # counters stay on the host
        assert isinstance(a, np.ndarray) == (key in ("num_batches_tracked", "step")), key
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    for key, g in layer.grads.items():
        np.testing.assert_array_equal(g.copy_to_host(), grads_host[key])
    assert layer.load_state_dict(state) == ([], [])  # loads into the device arrays

    y = layer(*(cuda.to_device(x) for x in x_inputs))
    assert not isinstance(y, np.ndarray), "device in, device out"
    dx = layer.backward(cuda.to_device(dy))  # accumulates on the device
    assert dx is None or not isinstance(dx, np.ndarray)

    assert layer.to("numpy") is layer and layer.backend == "numpy"
    assert all(_kinds(layer).values())
    layer.zero_grad()
    y_eval_host = layer(*x_inputs)
    dx_eval_host = layer.backward(dy)
    np.testing.assert_allclose(host(y), y_eval_host, rtol=2e-5, atol=2e-6)
    if dx is not None:
        np.testing.assert_allclose(host(dx), dx_eval_host, rtol=2e-5, atol=2e-6)


@pytest.mark.cuda
def test_device_grads_accumulate_and_reset():
    cuda = _cuda()
    bn = L.BatchNorm2d(3, backend="cuda")
    assert not isinstance(bn.params["weight"], np.ndarray)
    x = cuda.to_device(np.arange(24.0, dtype=np.float32).reshape(2, 3, 2, 2) % 5)
    dy = cuda.to_device(np.ones((2, 3, 2, 2), np.float32))
    bn(x)
    bn.backward(dy)
    bn.backward(np.ones((2, 3, 2, 2), np.float32))  # a host gradient into device grads
    np.testing.assert_allclose(bn.grads["bias"].copy_to_host(), 16.0)
    grad = bn.grads["bias"]
    bn.zero_grad()
    assert bn.grads["bias"] is grad and not grad.copy_to_host().any()


def test_to_host_keeps_arrays_and_rejects_unknown_backends():
    bn = L.BatchNorm1d(3)
    arrays = {k: id(a) for d in (bn.params, bn.grads, bn.buffers) for k, a in d.items()}
    assert bn.to("cpu") is bn and bn.backend == "cpu"
    assert {k: id(a) for d in (bn.params, bn.grads, bn.buffers) for k, a in d.items()} == arrays
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        bn.to("tpu")
    assert bn.backend == "cpu"
    bn.to("numpy")
    assert bn.backend == "numpy"

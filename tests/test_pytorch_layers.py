"""BatchNorm1d/2d, LayerNorm, Embedding, LeakyReLU, GELU and Identity against PyTorch, on
every backend: the same weights (copied through state_dict), forward values, gradients of
the input and of every parameter, running statistics and their counter; plus buffers in
state_dict / to / double, and the functional ops' input errors."""

import numpy as np
import pytest

import gpunn
import gpunn.functional as F
from gpunn import nn
from gpunn.errors import DTypeError, ShapeError

torch = pytest.importorskip("torch", reason="PyTorch is the oracle these layers are held to")

TOL = {"float32": dict(rtol=2e-5, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


def _torch_state_to_gpunn(layer, torch_layer):
    layer.load_state_dict(
        {k: v.detach().numpy().copy() for k, v in torch_layer.state_dict().items()}
    )


def _run_both(layer, torch_layer, x_host, backend, dtype, grad_input=True):
    """Forward and backward (of sum(y * w), w fixed random) on both; returns the host
    values: (y, y_torch, {name: (gpunn grad, torch grad)})."""
    x = gpunn.tensor(x_host, backend=backend, requires_grad=grad_input)
    xt = torch.tensor(x_host, requires_grad=grad_input)
    y, yt = layer(x), torch_layer(xt)
    w = np.random.default_rng(1).standard_normal(yt.shape).astype(dtype)
    (y * gpunn.tensor(w, backend=backend)).sum().backward()
    (yt * torch.tensor(w)).sum().backward()
    grads = {}
    if grad_input:
        grads["input"] = (x.grad.numpy(), xt.grad.numpy())
    tparams = dict(torch_layer.named_parameters())
    for name, p in layer.named_parameters():
        grads[name] = (p.grad.numpy(), tparams[name].grad.numpy())
    return y.numpy(), yt.detach().numpy(), grads


def _assert_state_equal(layer, torch_layer, dtype):
    tstate = torch_layer.state_dict()
    state = layer.state_dict()
    assert list(state) == list(tstate)
    for k, v in state.items():
        want = tstate[k].numpy()
        assert v.shape == want.shape, k
        assert v.dtype == want.dtype, k
        np.testing.assert_allclose(v.numpy(), want, err_msg=k, **TOL[dtype])


def _check(y, yt, grads, dtype):
    np.testing.assert_allclose(y, yt, err_msg="forward", **TOL[dtype])
    for name, (g, gt) in grads.items():
        assert g.shape == gt.shape and g.dtype == gt.dtype, name
        np.testing.assert_allclose(g, gt, err_msg=f"grad {name}", **TOL[dtype])


def _torch_dtype(dtype):
    return torch.float64 if dtype == "float64" else torch.float32


# ---------------------------------------------------------------------- batch norm
BN_CASES = [
    # (layer, input shape, kwargs)
    ("BatchNorm1d", (8, 5), {}),
    ("BatchNorm1d", (4, 3, 7), {"momentum": 0.3}),
    ("BatchNorm1d", (6, 4), {"momentum": None}),
    ("BatchNorm2d", (3, 4, 5, 6), {}),
    ("BatchNorm2d", (1, 3, 5, 5), {"eps": 1e-3}),  # a batch of one image
    ("BatchNorm2d", (2, 3, 4, 4), {"affine": False}),
    ("BatchNorm2d", (2, 3, 4, 4), {"track_running_stats": False}),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, shape, kwargs", BN_CASES, ids=lambda v: str(v))
def test_batch_norm_matches_pytorch(backend, dtype, name, shape, kwargs):
    rng = np.random.default_rng(0)
    channels = shape[1]
    with gpunn.use_backend(backend):
        layer = getattr(nn, name)(channels, **kwargs)
    tlayer = getattr(torch.nn, name)(channels, **kwargs).to(_torch_dtype(dtype))
    with torch.no_grad():
        if tlayer.affine:
            tlayer.weight.copy_(torch.tensor(rng.uniform(0.5, 1.5, channels)))
            tlayer.bias.copy_(torch.tensor(rng.standard_normal(channels)))
        if tlayer.track_running_stats:
            tlayer.running_mean.copy_(torch.tensor(rng.standard_normal(channels)))
            tlayer.running_var.copy_(torch.tensor(rng.uniform(0.5, 2.0, channels)))
            tlayer.num_batches_tracked.fill_(3)
    if dtype == "float64":
        layer.double()
    _torch_state_to_gpunn(layer, tlayer)
    _assert_state_equal(layer, tlayer, dtype)
    # two training steps (statistics of each batch, running statistics updated twice)
    for step in range(2):
        x_host = (2 * rng.standard_normal(shape) + step).astype(dtype)
        layer.zero_grad()
        tlayer.zero_grad()
        _check(*_run_both(layer, tlayer, x_host, backend, dtype), dtype)
        _assert_state_equal(layer, tlayer, dtype)
    # eval: the running statistics normalise (the batch's when they are not tracked)
    layer.eval()
    tlayer.eval()
    layer.zero_grad()
    tlayer.zero_grad()
    x_host = rng.standard_normal(shape).astype(dtype)
    _check(*_run_both(layer, tlayer, x_host, backend, dtype), dtype)
    _assert_state_equal(layer, tlayer, dtype)


def test_batch_norm_buffers_in_state_dict_to_and_double(backend):
    layer = nn.BatchNorm2d(3)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in layer.named_buffers()] == [
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
    assert list(layer.state_dict()) == list(torch.nn.BatchNorm2d(3).state_dict())
    layer.to(backend)
    assert {b.backend for b in layer.buffers()} == {backend}
    layer(gpunn.randn(2, 3, 4, 4, backend=backend))
    assert int(layer.num_batches_tracked) == 1
    layer.double()
    assert layer.running_mean.dtype == np.float64 and layer.running_var.dtype == np.float64
    assert layer.num_batches_tracked.dtype == np.int64
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    tnet = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU())
    assert list(net.state_dict()) == list(tnet.state_dict())
    net.load_state_dict({k: v.numpy() for k, v in tnet.state_dict().items()})


def test_batch_norm_eval_gradients_of_the_running_statistics():
    """Outside training the running statistics are constants of an affine map. PyTorch
    refuses them as inputs that require grad; gpunn gives that map's exact gradients,
    checked here against PyTorch differentiating the formula itself."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 4))
    rm, rv = rng.standard_normal(2), rng.uniform(0.5, 2, 2)
    w, b = rng.standard_normal(2), rng.standard_normal(2)
    ours = [gpunn.tensor(a, requires_grad=True) for a in (x, rm, rv, w, b)]
    tx, trm, trv, tw, tb = [torch.tensor(a, requires_grad=True) for a in (x, rm, rv, w, b)]
    F.batch_norm(*ours, training=False).sum().backward()
    col = lambda v: v[None, :, None]  # noqa: E731
    ((tx - col(trm)) / torch.sqrt(col(trv) + 1e-5) * col(tw) + col(tb)).sum().backward()
    for o, t in zip(ours, (tx, trm, trv, tw, tb)):
        np.testing.assert_allclose(o.grad.numpy(), t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_batch_norm_errors_name_the_op_and_shapes():
    x = gpunn.randn(4, 3, 5)
    with pytest.raises(ShapeError, match=r"batch_norm: weight of shape \(4,\).*3 channels"):
        F.batch_norm(x, None, None, gpunn.ones(4), None, training=True)
    with pytest.raises(ValueError, match="batch_norm: running_mean and running_var must be given"):
        F.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*\(1, 3\)"):
        F.batch_norm(gpunn.randn(1, 3), None, None, training=True)
    with pytest.raises(DTypeError, match="batch_norm: inputs mix float32 and float64"):
        F.batch_norm(x, gpunn.zeros(3, dtype="float64"), gpunn.ones(3, dtype="float64"))
    with pytest.raises(
        ShapeError, match=r"BatchNorm2d: expected 4-d input \(N, C, H, W\), got shape \(4, 3, 5\)"
    ):
        nn.BatchNorm2d(3)(x)
    with pytest.raises(ShapeError, match=r"BatchNorm1d: expected 2-d or 3-d"):
        nn.BatchNorm1d(3)(gpunn.randn(2, 3, 4, 4))


# ---------------------------------------------------------------------- layer norm
LN_CASES = [
    ((4, 7), 7, {}),
    ((2, 3, 4, 5), (4, 5), {}),
    ((1, 9), [9], {"eps": 1e-3}),
    ((3, 2, 6), 6, {"elementwise_affine": False}),
    ((3, 2, 6), 6, {"bias": False}),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape, normalized, kwargs", LN_CASES, ids=lambda v: str(v))
def test_layer_norm_matches_pytorch(backend, dtype, shape, normalized, kwargs):
    rng = np.random.default_rng(2)
    with gpunn.use_backend(backend):
        layer = nn.LayerNorm(normalized, **kwargs)
    tlayer = torch.nn.LayerNorm(normalized, **kwargs).to(_torch_dtype(dtype))
    with torch.no_grad():
        for p in tlayer.parameters():
            p.copy_(torch.tensor(rng.standard_normal(tuple(p.shape))))
    if dtype == "float64":
        layer.double()
    _torch_state_to_gpunn(layer, tlayer)
    _assert_state_equal(layer, tlayer, dtype)
    x_host = (3 * rng.standard_normal(shape) + 1).astype(dtype)
    _check(*_run_both(layer, tlayer, x_host, backend, dtype), dtype)


def test_layer_norm_errors_name_the_op_and_shapes():
    with pytest.raises(
        ShapeError,
        match=r"layer_norm: input of shape \(2, 5\) does not end in normalized_shape \(4,\)",
    ):
        F.layer_norm(gpunn.randn(2, 5), 4)
    with pytest.raises(
        ShapeError, match=r"layer_norm: weight of shape \(5,\), expected normalized_shape \(4,\)"
    ):
        F.layer_norm(gpunn.randn(2, 4), (4,), gpunn.ones(5))
    with pytest.raises(DTypeError, match="layer_norm: input 0 has dtype int64"):
        F.layer_norm(gpunn.tensor(np.zeros((2, 4), np.int64)), 4)


# ---------------------------------------------------------------------- embedding
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding_matches_pytorch(backend, dtype, padding_idx):
    rng = np.random.default_rng(3)
    with gpunn.use_backend(backend):
        layer = nn.Embedding(6, 4, padding_idx=padding_idx)
    tlayer = torch.nn.Embedding(6, 4, padding_idx=padding_idx).to(_torch_dtype(dtype))
    if padding_idx is not None:
        assert np.all(layer.weight.numpy()[padding_idx] == 0)
    if dtype == "float64":
        layer.double()
    _torch_state_to_gpunn(layer, tlayer)
    idx = rng.integers(0, 6, (5, 7))  # 35 positions over 6 rows: every row repeats
    x = gpunn.tensor(idx, backend=backend)
    y, yt = layer(x), tlayer(torch.tensor(idx))
    w = rng.standard_normal(yt.shape).astype(dtype)
    (y * gpunn.tensor(w, backend=backend)).sum().backward()
    (yt * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(layer.weight.grad.numpy(), tlayer.weight.grad.numpy(), **TOL[dtype])
    assert list(layer.state_dict()) == ["weight"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_embedding_backward_is_the_reference_bit_for_bit(accel_backend, dtype):
    """Many positions on few rows: each row is summed in position order on every backend,
    so the accelerated gradient equals the reference's exactly, whatever the threads."""
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 3, 5000)
    weight = rng.standard_normal((3, 64)).astype(dtype)
    dY = rng.standard_normal((5000, 64)).astype(dtype)  # enough work for the parallel kernel
    grads = []
    for name in ("numpy", accel_backend):
        be = gpunn.backends.backend_object(name)
        _, saved = be.embedding_forward(be.asarray(idx), be.asarray(weight), padding_idx=1)
        grads.append(be.to_numpy(be.embedding_backward(be.asarray(dY), saved, (False, True))[1]))
    np.testing.assert_array_equal(grads[0], grads[1])
    assert np.all(grads[0][1] == 0)


def test_embedding_errors_name_the_op():
    w = gpunn.randn(5, 3)
    with pytest.raises(
        IndexError, match=r"embedding: input holds indices outside \[0, 5\): min 0, max 5"
    ):
        F.embedding(gpunn.tensor(np.array([0, 5])), w)
    with pytest.raises(
        DTypeError, match="embedding: input must hold integer indices, got dtype float32"
    ):
        F.embedding(gpunn.randn(2), w)
    with pytest.raises(ShapeError, match=r"embedding: weight must be 2-d .* got shape \(5,\)"):
        F.embedding(gpunn.tensor(np.array([0])), gpunn.randn(5))
    with pytest.raises(ValueError, match="padding_idx 7 is out of range"):
        nn.Embedding(5, 3, padding_idx=7)


# ---------------------------------------------------------------------- activations, identity
ACTIVATIONS = [
    ("LeakyReLU", {}),
    ("LeakyReLU", {"negative_slope": 0.2}),
    ("GELU", {}),
    ("GELU", {"approximate": "tanh"}),
    ("Identity", {}),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, kwargs", ACTIVATIONS, ids=lambda v: str(v))
def test_activation_layers_match_pytorch(backend, dtype, name, kwargs):
    rng = np.random.default_rng(6)
    layer, tlayer = getattr(nn, name)(**kwargs), getattr(torch.nn, name)(**kwargs)
    x_host = np.concatenate([3 * rng.standard_normal(40), [-9.0, -0.3, 0.25, 9.0]])
    x_host = x_host.reshape(4, 11).astype(dtype)
    _check(*_run_both(layer, tlayer, x_host, backend, dtype), dtype)


def test_activation_errors():
    with pytest.raises(ValueError, match="gelu: approximate must be 'none' or 'tanh', got 'fast'"):
        F.gelu(gpunn.randn(3), approximate="fast")
    with pytest.raises(DTypeError, match="leaky_relu: input 0 has dtype int64"):
        F.leaky_relu(gpunn.tensor(np.arange(3)))

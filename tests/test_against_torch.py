"""gpunn against PyTorch through the public API only, on every available backend: values,
and every leaf gradient's shape, dtype and values.

Independent of gpunn's own reference backend: each case is written once for gpunn and once
for PyTorch, in each framework's own words.
"""

import numpy as np
import pytest

import gpunn
import gpunn.functional as F

torch = pytest.importorskip("torch", reason="PyTorch is the independent oracle of this file")
TF = torch.nn.functional

TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-10, atol=1e-12)}


def _normal(*shape):
    return lambda rng: rng.standard_normal(shape)


def _positive(*shape):
    return lambda rng: rng.uniform(0.5, 2.0, shape)


def _away(*shape):
    return lambda rng: rng.uniform(0.1, 2.0, shape) * rng.choice([-1, 1], shape)


def _probs(*shape):
    return lambda rng: rng.uniform(0.05, 0.95, shape)


def _labels(n, classes):
    return lambda rng: rng.integers(0, classes, n)


# (name, input makers, gpunn function, torch function). Float inputs are leaves that
# require grad; integer inputs (class labels) are constants.
CASES = [
    ("lecture-J", [_normal()] * 3, lambda x, y, z: 4 * (x + y * z), None),
    ("0d-times-matrix", [_normal(), _normal(3, 2)], lambda a, b: a * b, None),
    ("0d-pow-exp-div", [_positive(), _positive()], lambda a, b: (a**3).exp() / b, None),
    ("0d-sub-scalar", [_normal()], lambda a: 2.5 - a * 1.5, None),
    ("broadcast-add", [_normal(4, 3), _normal(3)], lambda a, b: a + b, None),
    (
        "broadcast-mix",
        [_normal(2, 1, 4), _normal(3, 1), _away(4), _positive(1, 3, 1)],
        lambda a, b, c, d: (a * b - c) / d,
        None,
    ),
    ("pow-broadcast", [_positive(3, 4), _normal(4)], lambda a, b: a**b, None),
    ("pow-scalar", [_normal(5)], lambda a: a**2, None),
    ("neg-exp-log", [_positive(4, 2)], lambda a: -(a.exp() + a.log()), None),
    ("sigmoid", [_normal(6)], lambda a: a.sigmoid(), lambda a: a.sigmoid()),
    ("tanh", [_normal(2, 3)], lambda a: a.tanh(), lambda a: a.tanh()),
    ("relu", [_away(3, 5)], lambda a: a.relu(), lambda a: a.relu()),
    ("sum-all", [_normal(3, 4)], lambda a: a.sum(), None),
    ("sum-axis0", [_normal(3, 4)], lambda a: a.sum(axis=0), lambda a: a.sum(dim=0)),
    (
        "mean-axes-keepdims",
        [_normal(2, 3, 4)],
        lambda a: a.mean(axis=(0, 2), keepdims=True),
        lambda a: a.mean(dim=(0, 2), keepdim=True),
    ),
    ("mean-0d", [_normal()], lambda a: a.mean(), None),
    ("sum-one-element", [_normal(1, 1)], lambda a: a.sum(), None),
    ("reshape", [_normal(3, 4)], lambda a: a.reshape(2, 6), None),
    ("reshape-to-0d", [_normal(1)], lambda a: a.reshape(()), None),
    (
        "transpose",
        [_normal(2, 3, 4)],
        lambda a: a.transpose(2, 0, 1),
        lambda a: a.permute(2, 0, 1),
    ),
    ("T", [_normal(3, 4)], lambda a: a.T, lambda a: a.t()),
    ("getitem-slice", [_normal(4, 5)], lambda a: a[:, 1:3], None),
    ("getitem-int-to-0d", [_normal(4)], lambda a: a[2], None),
    ("matmul", [_normal(5, 7), _normal(7, 3)], lambda a, b: a @ b, None),
    ("matmul-batched", [_normal(2, 5, 7), _normal(7, 3)], lambda a, b: a @ b, None),
    ("matmul-1x1", [_normal(1, 1), _normal(1, 1)], lambda a, b: a @ b, None),
    (
        "linear",
        [_normal(6, 7), _normal(5, 7), _normal(5)],
        lambda x, w, b: F.linear(x, w, b),
        lambda x, w, b: TF.linear(x, w, b),
    ),
    (
        "linear-one-unit",
        [_normal(1, 1), _normal(1, 1), _normal(1)],
        lambda x, w, b: F.linear(x, w, b),
        lambda x, w, b: TF.linear(x, w, b),
    ),
    (
        "conv2d",
        [_normal(2, 3, 9, 7), _normal(4, 3, 3, 3), _normal(4)],
        lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
        lambda x, w, b: TF.conv2d(x, w, b, stride=2, padding=1),
    ),
    (
        "conv2d-nobias",
        [_normal(1, 2, 6, 6), _normal(3, 2, 5, 5)],
        lambda x, w: F.conv2d(x, w, padding=2),
        lambda x, w: TF.conv2d(x, w, padding=2),
    ),
    (
        "max_pool2d",
        [lambda rng: rng.permutation(2 * 3 * 8 * 8).reshape(2, 3, 8, 8) / 7.0],
        lambda x: F.max_pool2d(x, 2),
        lambda x: TF.max_pool2d(x, 2),
    ),
    (
        "max_pool2d-pad",
        [lambda rng: rng.permutation(1 * 2 * 9 * 7).reshape(1, 2, 9, 7) / 7.0],
        lambda x: F.max_pool2d(x, 3, stride=2, padding=1),
        lambda x: TF.max_pool2d(x, 3, stride=2, padding=1),
    ),
    (
        "avg_pool2d-pad",
        [_normal(2, 2, 7, 9)],
        lambda x: F.avg_pool2d(x, 3, stride=2, padding=1),
        lambda x: TF.avg_pool2d(x, 3, stride=2, padding=1),
    ),
    ("softmax", [_normal(4, 6)], lambda x: F.softmax(x, 1), lambda x: TF.softmax(x, dim=1)),
    (
        "softmax-len1-axis",
        [_normal(4, 1)],
        lambda x: F.softmax(x, -1),
        lambda x: TF.softmax(x, dim=-1),
    ),
    (
        "log_softmax-axis0",
        [_normal(3, 4, 2)],
        lambda x: F.log_softmax(x, 0),
        lambda x: TF.log_softmax(x, dim=0),
    ),
    (
        "mse",
        [_normal(8, 3), _normal(8, 3)],
        F.mse_loss,
        TF.mse_loss,
    ),
    ("mse-0d", [_normal(), _normal()], F.mse_loss, TF.mse_loss),
    (
        "bce",
        [_probs(9, 1), _probs(9, 1)],
        F.binary_cross_entropy,
        TF.binary_cross_entropy,
    ),
    (
        "bce-one-element",
        [_probs(1), _probs(1)],
        F.binary_cross_entropy,
        TF.binary_cross_entropy,
    ),
    (
        "bce-logits",
        [_normal(5, 2), _probs(5, 2)],
        F.binary_cross_entropy_with_logits,
        TF.binary_cross_entropy_with_logits,
    ),
    (
        "cross-entropy",
        [_normal(7, 10), _labels(7, 10)],
        F.cross_entropy,
        TF.cross_entropy,
    ),
    (
        "cross-entropy-one-sample",
        [_normal(1, 3), _labels(1, 3)],
        F.cross_entropy,
        TF.cross_entropy,
    ),
    (
        "logistic-regression",
        [_normal(10, 4), _normal(1, 4), _normal(1), _probs(10, 1)],
        lambda x, w, b, y: F.binary_cross_entropy(F.linear(x, w, b).sigmoid(), y),
        lambda x, w, b, y: TF.binary_cross_entropy(TF.linear(x, w, b).sigmoid(), y),
    ),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_matches_torch(backend, case, dtype):
    name, makers, ours, theirs = case
    theirs = theirs or ours  # operators and methods spelled the same way in both
    rng = np.random.default_rng(0)
    host = [make(rng) for make in makers]
    host = [np.asarray(h, dtype if np.asarray(h).dtype.kind == "f" else np.int64) for h in host]
    grad = [h.dtype.kind == "f" for h in host]
    xs = [gpunn.tensor(h, backend=backend, requires_grad=g) for h, g in zip(host, grad)]
    ts = [torch.tensor(h, requires_grad=bool(g)) for h, g in zip(host, grad)]

    y, t = ours(*xs), theirs(*ts)
    assert y.shape == tuple(t.shape), f"{name}: output shape"
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y.numpy(), t.detach().numpy(), **TOL[dtype], err_msg=name)

    w = rng.standard_normal(y.shape).astype(dtype)
    (y * gpunn.tensor(w, backend=backend)).sum().backward()
    (t * torch.tensor(w)).sum().backward()
    for i, (x, tx) in enumerate(zip(xs, ts)):
        if not grad[i]:
            continue
        assert x.grad.shape == tuple(tx.grad.shape) == x.shape, f"{name}: grad {i} shape"
        assert x.grad.dtype == x.dtype, f"{name}: grad {i} dtype"
        g = x.grad.numpy()
        assert g.shape == x.shape
        np.testing.assert_allclose(
            g, tx.grad.numpy(), **TOL[dtype], err_msg=f"{name}: grad of input {i}"
        )


def test_lecture_example_gives_0d_gradients_like_torch(backend):
    x, y, z = (gpunn.tensor(v, backend=backend, requires_grad=True) for v in (2.0, 3.0, 4.0))
    J = 4 * (x + y * z)
    J.backward()
    assert J.shape == () and float(J.numpy()) == 56.0
    got = [float(v.grad.numpy()) for v in (x, y, z)]
    tx, ty, tz = (torch.tensor(v, requires_grad=True) for v in (2.0, 3.0, 4.0))
    (4 * (tx + ty * tz)).backward()
    assert got == [float(v.grad) for v in (tx, ty, tz)] == [4.0, 16.0, 12.0]
    assert all(v.grad.shape == () for v in (x, y, z))


def _small_cnn(lib):
    nn = lib.nn
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        nn.Tanh(),
        nn.Linear(5, 3),
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_model_trains_like_torch_from_the_same_weights(backend, optimizer):
    """A PyTorch state_dict loads key for key; loss, every parameter's gradient and three
    optimizer steps then agree (float64)."""
    torch.manual_seed(0)
    theirs = _small_cnn(torch).double()
    ours = _small_cnn(gpunn).to(backend).double()
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 1, 8, 8)), rng.integers(0, 3, 4)
    if optimizer == "sgd":
        opt_t = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        opt_g = gpunn.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    else:
        opt_t = torch.optim.Adam(theirs.parameters(), lr=0.01, weight_decay=0.01)
        opt_g = gpunn.optim.Adam(ours.parameters(), lr=0.01, weight_decay=0.01)
    xg, yg = gpunn.tensor(x, backend=backend), gpunn.tensor(y, backend=backend)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for step in range(3):
        opt_t.zero_grad()
        opt_g.zero_grad()
        loss_t = TF.cross_entropy(theirs(xt), yt)
        loss_g = F.cross_entropy(ours(xg), yg)
        loss_t.backward()
        loss_g.backward()
        assert loss_g.shape == () and loss_g.dtype == np.float64
        np.testing.assert_allclose(float(loss_g.numpy()), loss_t.item(), rtol=1e-10)
        grads_t = {k: p.grad.numpy() for k, p in theirs.named_parameters()}
        for k, p in ours.named_parameters():
            assert p.grad.shape == p.shape == grads_t[k].shape, k
            np.testing.assert_allclose(
                p.grad.numpy(), grads_t[k], rtol=1e-9, atol=1e-12, err_msg=f"step {step}: {k}"
            )
        opt_t.step()
        opt_g.step()
    for k, p in theirs.state_dict().items():
        np.testing.assert_allclose(
            ours.state_dict()[k].numpy(), p.numpy(), rtol=1e-9, atol=1e-12, err_msg=k
        )

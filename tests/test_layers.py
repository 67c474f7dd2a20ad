"""Each layer against a hand-computed case, and PyTorch's parameter names and shapes."""

import numpy as np
import pytest

import gpunn
from gpunn import nn
from gpunn.errors import CheckpointError, ShapeError


def _set(param, values):
    param.set_(param.backend_object.asarray(np.asarray(values, dtype=param.dtype)))


def test_linear_hand_computed(backend):
    with gpunn.use_backend(backend):
        layer = nn.Linear(2, 2)
    _set(layer.weight, [[1, 2], [3, 4]])
    _set(layer.bias, [0.5, -1])
    x = gpunn.tensor([[1.0, 1.0], [0.0, -1.0]], backend=backend)
    np.testing.assert_allclose(layer(x).numpy(), [[3.5, 6.0], [-1.5, -5.0]])
    np.testing.assert_allclose(layer(x, activation="relu").numpy(), [[3.5, 6.0], [0, 0]])


def test_perceptron_outputs_steps(backend):
    with gpunn.use_backend(backend):
        p = nn.Perceptron(2)
    _set(p.weight, [[1, -1]])
    _set(p.bias, [0])
    x = gpunn.tensor([[2.0, 1.0], [1.0, 3.0], [1.0, 1.0]], backend=backend)
    np.testing.assert_array_equal(p(x).numpy(), [[1], [0], [1]])


def test_conv2d_hand_computed(backend):
    with gpunn.use_backend(backend):
        conv = nn.Conv2d(1, 1, 2, padding=0)
    _set(conv.weight, [[[[1, 0], [0, -1]]]])
    _set(conv.bias, [1])
    x = gpunn.tensor(np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3), backend=backend)
    # each output = x[i, j] - x[i+1, j+1] + 1 = -4 + 1
    np.testing.assert_allclose(conv(x).numpy(), np.full((1, 1, 2, 2), -3.0))
    strided = nn.Conv2d(1, 1, 3, stride=2, padding=1).to(backend)
    assert strided(x).shape == (1, 1, 2, 2)


def test_pooling_hand_computed(backend):
    x = gpunn.tensor(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4), backend=backend)
    np.testing.assert_array_equal(nn.MaxPool2d(2)(x).numpy(), [[[[5, 7], [13, 15]]]])
    np.testing.assert_array_equal(nn.AvgPool2d(2)(x).numpy(), [[[[2.5, 4.5], [10.5, 12.5]]]])
    padded = nn.AvgPool2d(2, stride=2, padding=1)(x).numpy()
    assert padded[0, 0, 0, 0] == 0 / 4 and padded[0, 0, 2, 2] == 15 / 4


def test_activations_softmax_flatten_dropout(backend):
    x = gpunn.tensor([[-1.0, 0.0, 2.0]], backend=backend)
    np.testing.assert_allclose(nn.ReLU()(x).numpy(), [[0, 0, 2]])
    np.testing.assert_allclose(
        nn.Sigmoid()(x).numpy(), 1 / (1 + np.exp([[1.0, 0.0, -2.0]])), rtol=1e-6
    )
    np.testing.assert_allclose(nn.Tanh()(x).numpy(), np.tanh([[-1.0, 0.0, 2.0]]), rtol=1e-6)
    e = np.exp([-1.0, 0.0, 2.0])
    np.testing.assert_allclose(nn.Softmax(axis=-1)(x).numpy(), [e / e.sum()], rtol=1e-6)
    assert nn.Flatten()(gpunn.zeros(2, 3, 4, 5, backend=backend)).shape == (2, 60)
    drop = nn.Dropout(0.5)
    y = drop(gpunn.ones(1000, backend=backend)).numpy()
    assert set(np.unique(y)) <= {0.0, 2.0} and 350 < (y == 0).sum() < 650
    drop.eval()
    np.testing.assert_array_equal(drop(gpunn.ones(10, backend=backend)).numpy(), np.ones(10))


def test_dropout_mask_is_the_same_on_every_backend_for_one_seed():
    masks = []
    for name in gpunn.available_backends():
        gpunn.manual_seed(42)
        masks.append(gpunn.functional.dropout(gpunn.ones(500, backend=name), 0.3).numpy())
    for m in masks[1:]:
        np.testing.assert_array_equal(m, masks[0])


def test_rnn_hand_computed_one_step(backend):
    with gpunn.use_backend(backend):
        rnn = nn.RNN(1, 1)
    for name, v in [
        ("weight_ih_l0", [[2.0]]),
        ("weight_hh_l0", [[0.5]]),
        ("bias_ih_l0", [0.1]),
        ("bias_hh_l0", [-0.1]),
    ]:
        _set(getattr(rnn, name), v)
    x = gpunn.tensor([[[1.0]], [[0.0]]], backend=backend)  # (seq 2, batch 1, feature 1)
    out, h = rnn(x)
    h1 = np.tanh(2.0)
    h2 = np.tanh(0.5 * h1)
    np.testing.assert_allclose(out.numpy().ravel(), [h1, h2], rtol=1e-6)
    np.testing.assert_allclose(h.numpy(), [[[h2]]], rtol=1e-6)


def test_lstm_hand_computed_one_step(backend):
    with gpunn.use_backend(backend):
        lstm = nn.LSTM(1, 1, bias=False)
    _set(lstm.weight_ih_l0, [[1.0], [2.0], [3.0], [4.0]])  # i, f, g, o
    _set(lstm.weight_hh_l0, [[0.0], [0.0], [0.0], [0.0]])
    x = gpunn.tensor([[[0.5]]], backend=backend)
    out, (h, c) = lstm(x)
    sig = lambda v: 1 / (1 + np.exp(-v))
    c1 = sig(0.5) * np.tanh(1.5)  # f * c0 (= 0) + i * g
    h1 = sig(2.0) * np.tanh(c1)
    np.testing.assert_allclose(c.numpy(), [[[c1]]], rtol=1e-6)
    np.testing.assert_allclose(h.numpy(), [[[h1]]], rtol=1e-6)


def test_recurrent_shapes_follow_pytorch():
    lstm = nn.LSTM(5, 7, num_layers=2, batch_first=True)
    out, (h, c) = lstm(gpunn.randn(3, 4, 5))  # batch 3, seq 4
    assert out.shape == (3, 4, 7) and h.shape == (2, 3, 7) and c.shape == (2, 3, 7)
    rnn = nn.RNN(5, 7)
    out, h = rnn(gpunn.randn(4, 3, 5))
    assert out.shape == (4, 3, 7) and h.shape == (1, 3, 7)
    with pytest.raises(ShapeError, match=r"LSTM: input must be \(batch, seq, feature\)"):
        lstm(gpunn.randn(3, 4, 6))


# PyTorch's names and shapes for the same layers, written out.
PYTORCH_LAYOUTS = {
    "linear": (lambda: nn.Linear(4, 3), {"weight": (3, 4), "bias": (3,)}),
    "conv": (lambda: nn.Conv2d(2, 5, 3), {"weight": (5, 2, 3, 3), "bias": (5,)}),
    "lstm": (
        lambda: nn.LSTM(4, 6, num_layers=2),
        {
            "weight_ih_l0": (24, 4),
            "weight_hh_l0": (24, 6),
            "bias_ih_l0": (24,),
            "bias_hh_l0": (24,),
            "weight_ih_l1": (24, 6),
            "weight_hh_l1": (24, 6),
            "bias_ih_l1": (24,),
            "bias_hh_l1": (24,),
        },
    ),
    "rnn": (
        lambda: nn.RNN(4, 6),
        {"weight_ih_l0": (6, 4), "weight_hh_l0": (6, 6), "bias_ih_l0": (6,), "bias_hh_l0": (6,)},
    ),
    "sequential": (
        lambda: nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)),
        {
            "0.weight": (3, 2),
            "0.bias": (3,),
            "2.weight": (1, 3),
            "2.bias": (1,),
        },
    ),
}


@pytest.mark.parametrize("name", PYTORCH_LAYOUTS)
def test_parameter_names_and_shapes_match_pytorch(name):
    make, expected = PYTORCH_LAYOUTS[name]
    got = {k: v.shape for k, v in make().state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # PyTorch's order too


def test_default_init_matches_pytorch_bounds():
    layer = nn.Linear(400, 50)
    w = layer.weight.numpy()
    assert layer.weight.dtype == np.float32
    assert np.abs(w).max() <= 1 / 20 and np.abs(w).max() > 0.9 / 20
    lstm = nn.LSTM(3, 100)
    assert np.abs(lstm.weight_hh_l0.numpy()).max() <= 0.1


def test_same_seed_gives_the_same_parameters_on_every_backend():
    states = []
    for name in gpunn.available_backends():
        gpunn.manual_seed(3)
        with gpunn.use_backend(name):
            m = gpunn.models.LeNet5()
        states.append({k: v.numpy() for k, v in m.state_dict().items()})
    for s in states[1:]:
        for k in s:
            np.testing.assert_array_equal(s[k], states[0][k])


def test_module_registration_order_and_dotted_names():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(2, 3)
            self.scale = nn.Parameter(gpunn.ones(1))
            self.fc2 = nn.Linear(3, 1)

        def forward(self, x):
            return self.fc2(self.fc1(x)) * self.scale

    names = [n for n, _ in Net().named_parameters()]
    assert names == ["scale", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def test_load_state_dict_copies_and_keeps_float64():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    state = {k: v.numpy().astype(np.float64) for k, v in a.state_dict().items()}
    b.load_state_dict(state)
    assert b.weight.dtype == np.float64
    state["weight"][0, 0] = 99.0
    assert b.weight.numpy()[0, 0] != 99.0


def test_load_state_dict_names_missing_extra_and_misshaped_keys():
    m = nn.Linear(3, 2)
    good = {k: v.numpy() for k, v in m.state_dict().items()}
    with pytest.raises(CheckpointError, match="missing keys: bias"):
        m.load_state_dict({"weight": good["weight"]})
    with pytest.raises(CheckpointError, match="unexpected keys: extra"):
        m.load_state_dict({**good, "extra": good["bias"]})
    with pytest.raises(
        CheckpointError, match=r"'weight' has shape \(2, 2\), the parameter has shape \(2, 3\)"
    ):
        m.load_state_dict({**good, "weight": np.zeros((2, 2), np.float32)})


def test_layer_shape_errors_name_the_layer_and_shapes():
    with pytest.raises(
        ShapeError, match=r"linear: input of shape \(2, 5\) does not fit weight of shape \(3, 4\)"
    ):
        nn.Linear(4, 3)(gpunn.zeros(2, 5))
    with pytest.raises(ShapeError, match=r"conv2d: input of shape \(1, 2, 8, 8\) has 2 channels"):
        nn.Conv2d(3, 4, 3)(gpunn.zeros(1, 2, 8, 8))
    with pytest.raises(ShapeError, match="conv2d: input must be 4-d"):
        nn.Conv2d(3, 4, 3)(gpunn.zeros(3, 8, 8))


def test_train_eval_double_float_and_to():
    m = gpunn.models.MLP(4, (8,), 2, dropout=0.5)
    m.eval()
    assert not m.drop.training
    m.train()
    assert m.drop.training
    m.double()
    assert all(p.dtype == np.float64 for p in m.parameters())
    m.float()
    assert all(p.dtype == np.float32 for p in m.parameters())
    for name in gpunn.available_backends():
        m.to(name)
        assert {p.backend for p in m.parameters()} == {name}

"""Whole-sequence recurrent layers: one graph node per layer, PyTorch's weights and results,
and flat memory over long sequences. (The ops themselves are in the op-case table.)"""

import gc
import tracemalloc

import numpy as np
import pytest

import gpunn
from gpunn import nn
from gpunn.autograd import walk
from gpunn.errors import ShapeError


def _nodes(t):
    return [node.op for node in walk(t)]


@pytest.mark.parametrize("layer", ["lstm", "rnn"])
def test_graph_nodes_of_a_layer_do_not_grow_with_the_sequence(layer):
    make = (lambda: nn.LSTM(3, 5)) if layer == "lstm" else (lambda: nn.RNN(3, 5))
    counts = []
    for steps in (1, 7, 60):
        gpunn.manual_seed(0)
        out, _ = make()(gpunn.randn(steps, 2, 3))
        ops = _nodes(out.sum())
        assert ops.count(layer) == 1, ops
        counts.append(len(ops))
    assert counts[0] == counts[1] == counts[2], counts


def test_two_layers_are_two_nodes():
    out, (h, c) = nn.LSTM(3, 4, num_layers=2, batch_first=True)(gpunn.randn(2, 9, 3))
    ops = _nodes(out.sum() + h.sum() + c.sum())
    assert ops.count("lstm") == 2, ops


def _torch_pair(kind, dtype, **kw):
    torch = pytest.importorskip("torch", reason="compares with PyTorch's RNN/LSTM (torch absent)")
    torch.manual_seed(0)
    tcls, gcls = (torch.nn.LSTM, nn.LSTM) if kind == "lstm" else (torch.nn.RNN, nn.RNN)
    t = tcls(4, 6, **kw).to(getattr(torch, dtype))
    g = gcls(4, 6, **kw)
    g.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    assert list(g.state_dict()) == list(t.state_dict())
    return torch, t, g


CONFIGS = [
    ("lstm", dict(num_layers=2, batch_first=True), True),
    ("lstm", dict(num_layers=1, bias=False), False),
    ("lstm", dict(num_layers=3, dropout=0.5), True),  # dropout is off in eval()
    ("rnn", dict(num_layers=2, nonlinearity="relu"), True),
    ("rnn", dict(num_layers=1, nonlinearity="tanh", batch_first=True), False),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind, kw, with_state", CONFIGS)
def test_pytorch_state_dict_gives_the_same_outputs_and_gradients(
    backend, kind, kw, with_state, dtype
):
    torch, t, g = _torch_pair(kind, dtype, **kw)
    g.to(backend)
    t.eval()
    g.eval()
    rng = np.random.default_rng(1)
    layers = kw.get("num_layers", 1)
    x_host = rng.standard_normal((3, 5, 4) if kw.get("batch_first") else (5, 3, 4)).astype(dtype)
    states = [rng.standard_normal((layers, 3, 6)).astype(dtype) for _ in range(2)]
    xt = torch.tensor(x_host, requires_grad=True)
    xg = gpunn.tensor(x_host, backend=backend, requires_grad=True)
    st = [torch.tensor(s, requires_grad=True) for s in states]
    sg = [gpunn.tensor(s, backend=backend, requires_grad=True) for s in states]
    if kind == "lstm":
        args_t = (xt, tuple(st)) if with_state else (xt,)
        args_g = (xg, tuple(sg)) if with_state else (xg,)
        out_t, (h_t, c_t) = t(*args_t)
        out_g, (h_g, c_g) = g(*args_g)
        pairs = [(out_t, out_g), (h_t, h_g), (c_t, c_g)]
    else:
        out_t, h_t = t(*((xt, st[0]) if with_state else (xt,)))
        out_g, h_g = g(*((xg, sg[0]) if with_state else (xg,)))
        pairs = [(out_t, out_g), (h_t, h_g)]
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    loss_t = loss_g = 0
    for k, (a, b) in enumerate(pairs):
        np.testing.assert_allclose(b.numpy(), a.detach().numpy(), **tol, err_msg=f"output {k}")
        w = rng.standard_normal(a.shape).astype(dtype)
        loss_t = loss_t + (a * torch.tensor(w)).sum()
        loss_g = loss_g + (b * gpunn.tensor(w, backend=backend)).sum()
    loss_t.backward()
    loss_g.backward()
    grads_t = dict(t.named_parameters())
    for name, p in g.named_parameters():
        np.testing.assert_allclose(
            p.grad.numpy(), grads_t[name].grad.numpy(), **tol, err_msg=f"grad {name}"
        )
    np.testing.assert_allclose(xg.grad.numpy(), xt.grad.numpy(), **tol, err_msg="grad x")
    if with_state:
        used = st if kind == "lstm" else st[:1]
        for k, (a, b) in enumerate(zip(used, sg)):
            np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), **tol, err_msg=f"state {k}")


def test_dropout_between_layers_only_while_training():
    gpunn.manual_seed(3)
    lstm = nn.LSTM(3, 4, num_layers=2, dropout=0.5)
    x = gpunn.randn(6, 2, 3)
    train_out = lstm(x)[0].numpy()
    ops = _nodes(lstm(x)[0].sum())
    assert ops.count("dropout") == 1, ops  # between the two layers, not after the last
    lstm.eval()
    eval_out = lstm(x)[0].numpy()
    assert _nodes(lstm(x)[0].sum()).count("dropout") == 0
    assert not np.allclose(train_out, eval_out)
    # the same as running the layers by hand with PyTorch's rule: dropout on layer 0's output
    lstm.train()
    gpunn.manual_seed(11)
    got = lstm(x)[0].numpy()
    gpunn.manual_seed(11)
    zero = gpunn.zeros(2, 4)
    y0, _, _ = gpunn.functional.lstm(x, zero, zero, *lstm._weights(0))
    y1, _, _ = gpunn.functional.lstm(
        gpunn.functional.dropout(y0, 0.5), zero, zero, *lstm._weights(1)
    )
    np.testing.assert_array_equal(got, y1.numpy())
    with pytest.raises(ValueError, match="dropout"):
        nn.LSTM(3, 4, dropout=1.5)


def test_bad_shapes_name_the_op_and_shapes():
    F = gpunn.functional
    x = gpunn.randn(4, 2, 3)
    h = gpunn.zeros(2, 5)
    w_ih, w_hh = gpunn.randn(20, 3), gpunn.randn(20, 5)
    with pytest.raises(ShapeError, match=r"lstm: .*c0 \(2, 6\)"):
        F.lstm(x, h, gpunn.zeros(2, 6), w_ih, w_hh)
    with pytest.raises(ShapeError, match=r"lstm: .*b_ih \(7,\)"):
        F.lstm(x, h, h, w_ih, w_hh, gpunn.zeros(7), gpunn.zeros(20))
    with pytest.raises(ShapeError, match=r"rnn: .*T >= 1"):
        F.rnn(gpunn.randn(0, 2, 3), h, gpunn.randn(5, 3), gpunn.randn(5, 5))
    with pytest.raises(ValueError, match="nonlinearity"):
        F.rnn(x, h, gpunn.randn(5, 3), gpunn.randn(5, 5), nonlinearity="gelu")
    with pytest.raises(ShapeError, match=r"LSTM: h0 must have shape \(1, 2, 5\)"):
        nn.LSTM(3, 5)(x, (gpunn.zeros(1, 3, 5), gpunn.zeros(1, 2, 5)))


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_lstm_over_1000_steps_trains_with_flat_memory(backend_name):
    if backend_name not in gpunn.available_backends():
        pytest.skip(f"{backend_name} backend not available")
    gpunn.manual_seed(0)
    with gpunn.use_backend(backend_name):
        model = gpunn.models.LSTMClassifier(3, 8, 2)
        x = gpunn.randn(2, 1000, 3)
        y = gpunn.tensor(np.array([0, 1]), backend=backend_name)
    opt = gpunn.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    losses = []

    def run(steps):
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())

    run(3)
    gc.collect()
    tracemalloc.start()
    run(3)
    gc.collect()
    after_warm, _ = tracemalloc.get_traced_memory()
    run(10)
    gc.collect()
    after_all, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert after_all - after_warm < 64 * 1024, (after_warm, after_all)
    assert losses[-1] < losses[0], losses  # it learns

"""The graph: the lecture's worked example, gradient accumulation, broadcasting, freeing."""

import gc
import tracemalloc

import numpy as np
import pytest

import gpunn
from gpunn import autograd, nn
from gpunn.errors import GraphError
from gpunn.testing import OP_CASES
from gpunn.testing.cases import input_needs, resolve_params


def test_lecture_example_forward_and_backward(backend):
    x = gpunn.tensor(2.0, backend=backend, requires_grad=True)
    y = gpunn.tensor(3.0, backend=backend, requires_grad=True)
    z = gpunn.tensor(4.0, backend=backend, requires_grad=True)
    J = 4 * (x + y * z)
    J.backward()
    assert J.item() == 56.0
    assert (x.grad.item(), y.grad.item(), z.grad.item()) == (4.0, 16.0, 12.0)
    for leaf, want in ((x, 4.0), (y, 16.0), (z, 12.0)):
        assert leaf.grad.shape == () and leaf.grad.dtype == np.float32
        assert float(leaf.grad.numpy()) == want


def test_gradient_of_a_0d_leaf_is_0d(backend):
    x = gpunn.tensor(2.0, backend=backend, requires_grad=True)
    (4 * x).backward()
    assert x.grad.shape == () and x.grad.numpy().shape == ()
    (x * x).backward()  # accumulating keeps the shape
    assert x.grad.shape == () and float(x.grad.numpy()) == 8.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", OP_CASES, ids=repr)
def test_every_leaf_grad_has_its_leaf_shape_and_dtype(backend, case, dtype):
    """Through the graph (Tensor inputs, backward from a scalar), for every op case."""
    rng = np.random.default_rng(1)
    params = resolve_params(case, dtype)
    inputs = case.make(rng, np.dtype(dtype))
    needs = input_needs(case, inputs)
    leaves = [
        gpunn.tensor(x, backend=backend, requires_grad=need) if isinstance(x, np.ndarray) else x
        for x, need in zip(inputs, needs)
    ]
    out = autograd.apply(case.op, *leaves, **params)
    outs = out if isinstance(out, tuple) else (out,)
    total = sum(
        (o * gpunn.tensor(rng.standard_normal(o.shape).astype(o.dtype), backend=backend)).sum()
        for o in outs
    )
    total.backward()
    checked = 0
    for i, x in enumerate(leaves):
        if isinstance(x, gpunn.Tensor) and x.requires_grad:
            assert x.grad is not None, f"input {i} got no gradient"
            assert (x.grad.shape, x.grad.dtype) == (x.shape, x.dtype), f"input {i}"
            assert x.grad.numpy().shape == x.shape
            checked += 1
        elif isinstance(x, gpunn.Tensor):
            assert x.grad is None, f"input {i} does not require grad but got one"
    assert checked


def test_tensor_used_twice_sums_its_gradients(backend):
    x = gpunn.tensor([1.0, 2.0, 3.0], backend=backend, requires_grad=True)
    y = (x * x + x * 3.0).sum()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.array([1, 2, 3]) + 3)


def test_broadcast_gradients_are_reduced_to_input_shape(backend):
    a = gpunn.randn(4, 3, backend=backend, requires_grad=True)
    b = gpunn.randn(3, backend=backend, requires_grad=True)
    c = gpunn.randn(4, 1, backend=backend, requires_grad=True)
    ((a + b) * c).sum().backward()
    assert b.grad.shape == (3,) and c.grad.shape == (4, 1)
    np.testing.assert_allclose(b.grad.numpy(), c.numpy().sum() * np.ones(3), rtol=1e-5)
    np.testing.assert_allclose(
        c.grad.numpy(), (a.numpy() + b.numpy()).sum(axis=1, keepdims=True), rtol=1e-5
    )


def test_gradients_accumulate_until_zeroed():
    w = gpunn.tensor([1.0, -2.0], requires_grad=True)
    for _ in range(3):
        (w * 2.0).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [6.0, 6.0])


def test_second_backward_through_freed_graph_raises():
    x = gpunn.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * 2.0).sum()
    y.backward()
    with pytest.raises(GraphError, match="second time"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = gpunn.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 8.0])


def test_backward_on_non_scalar_needs_a_gradient():
    x = gpunn.randn(2, 3, requires_grad=True)
    y = x * 2.0
    with pytest.raises(GraphError, match=r"non-scalar tensor of shape \(2, 3\)"):
        y.backward()
    y.backward(gpunn.ones(2, 3))
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 2.0))


def test_no_grad_records_nothing_and_detach_cuts_the_graph():
    x = gpunn.randn(3, requires_grad=True)
    with gpunn.no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.grad_fn is None
    z = (x * 2.0).detach()
    assert not z.requires_grad and z.is_leaf
    w = x * 3.0
    assert w.requires_grad and w.grad_fn is not None


def test_backward_on_a_tensor_without_grad_raises():
    with pytest.raises(GraphError, match="does not require grad"):
        gpunn.randn(3).sum().backward()


def test_deep_graph_of_thousands_of_steps_is_not_recursive():
    h = gpunn.tensor([0.5], requires_grad=True)
    x = h
    for _ in range(5000):
        x = (x * 0.999).tanh()
    x.sum().backward()
    assert h.grad is not None and np.isfinite(h.grad.numpy()).all()


def test_lstm_unrolled_over_1000_steps_backpropagates():
    gpunn.manual_seed(1)
    lstm = nn.LSTM(2, 3)
    x = gpunn.randn(1000, 1, 2)
    out, (h, c) = lstm(x)
    h.sum().backward()
    assert lstm.weight_hh_l0.grad.shape == (12, 3)
    assert np.isfinite(lstm.weight_ih_l0.grad.numpy()).all()


def test_matches_manual_chain_rule_for_a_composite():
    x_host = np.array([[0.3, -1.2], [2.0, 0.5]])
    x = gpunn.tensor(x_host, requires_grad=True)
    y = (x.sigmoid() * x.exp()).mean()
    y.backward()
    s = 1 / (1 + np.exp(-x_host))
    expected = (s * (1 - s) * np.exp(x_host) + s * np.exp(x_host)) / 4
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12)


def test_memory_stays_flat_over_2000_training_steps():
    gpunn.manual_seed(0)
    model = gpunn.models.MLP(20, (32,), 3)
    opt = gpunn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = gpunn.randn(16, 20)
    y = gpunn.tensor(np.arange(16) % 3)

    def run(steps):
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()

    run(50)
    gc.collect()
    tracemalloc.start()
    run(200)
    gc.collect()
    after_warm, _ = tracemalloc.get_traced_memory()
    run(1800)
    gc.collect()
    after_all, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # 1800 more steps may not hold on to more than a few kilobytes
    assert after_all - after_warm < 64 * 1024, (after_warm, after_all)


def test_gradcheck_passes_and_reports_mismatches():
    x = gpunn.randn(3, 4, requires_grad=True)
    w = gpunn.randn(5, 4, requires_grad=True)
    assert gpunn.gradcheck(lambda a, b: gpunn.functional.linear(a, b, activation="tanh"), [x, w])

    def wrong(a):
        return gpunn.functional.relu(a) * 1.0 + a.detach() * a.detach()

    y = gpunn.randn(4, requires_grad=True)
    with pytest.raises(AssertionError, match="input 0"):
        gpunn.gradcheck(wrong, [y])


def test_post_accumulate_hook_runs_once_per_backward_with_the_summed_grad():
    w = gpunn.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    w.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.numpy().copy()))
    y = (w * 2.0).sum() + (w * 3.0).sum() + (w * w).sum()
    y.backward()
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], 5 + 2 * np.array([1.0, 2.0]))
    with pytest.raises(GraphError, match="leaf"):
        (w * 2.0).register_post_accumulate_grad_hook(print)


def test_walk_lists_each_node_once_before_the_nodes_of_its_inputs():
    x = gpunn.tensor([1.0, 2.0], requires_grad=True)
    a = x * 2
    b = a.exp()
    y = (a + b).sum()
    nodes = autograd.walk(y)
    assert [n.op for n in nodes] == ["sum", "add", "exp", "mul"]
    position = {id(n): k for k, n in enumerate(nodes)}
    for n in nodes:
        for t in n.inputs:
            if t is not None and t.grad_fn is not None:
                assert position[id(t.grad_fn)] > position[id(n)]
    assert autograd.walk(x) == []

"""The lecture's logistic regression: autograd equals the closed forms, and gradient descent
reaches 95% on scikit-learn's breast cancer data."""

import numpy as np
import pytest

import gpunn
from gpunn import models, nn


def test_autograd_equals_the_closed_form_gradients(backend):
    rng = np.random.default_rng(0)
    n, d = 50, 4
    X = rng.standard_normal((n, d))
    Y = (rng.random(n) > 0.5).astype(np.float64)
    gpunn.manual_seed(0)
    with gpunn.use_backend(backend):
        model = models.LogisticRegression(d).double()
    A = model(gpunn.tensor(X, backend=backend))  # (n, 1)
    loss = nn.BCELoss()(A, gpunn.tensor(Y[:, None], backend=backend))
    loss.backward()
    a = A.numpy().ravel()
    dW = (a - Y) @ X / n  # (1/n)(A - Y) X^T
    db = np.mean(a - Y)
    np.testing.assert_allclose(model.linear.weight.grad.numpy().ravel(), dW, rtol=1e-10)
    np.testing.assert_allclose(model.linear.bias.grad.numpy(), [db], rtol=1e-10)


def test_gradient_descent_on_breast_cancer_reaches_95_percent():
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is in the test extra")
    data = datasets.load_breast_cancer()
    X, y = data.data, data.target.astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    train, test = order[:450], order[450:]
    mean, std = X[train].mean(0), X[train].std(0)
    X = ((X - mean) / std).astype(np.float32)
    gpunn.manual_seed(0)
    model = models.LogisticRegression(X.shape[1])
    opt = gpunn.optim.SGD(model.parameters(), lr=0.5)
    xt, yt = gpunn.tensor(X[train]), gpunn.tensor(y[train, None])
    for _ in range(300):  # full-batch gradient descent
        opt.zero_grad()
        loss = nn.BCELoss()(model(xt), yt)
        loss.backward()
        opt.step()
    with gpunn.no_grad():
        pred = model(gpunn.tensor(X[test])).numpy().ravel() > 0.5
    accuracy = (pred == y[test].astype(bool)).mean()
    assert accuracy >= 0.95, accuracy


def test_compare_backends_reports_deviations_per_output_and_gradient(accel_backend):
    model = models.MLP(6, (5,), 3).double()
    x = gpunn.randn(4, 6, dtype="float64")
    report = gpunn.testing.compare_backends(model, [x], backends=[accel_backend])
    entry = report[accel_backend]
    assert set(entry) == {
        "output 0",
        "grad input 0",
        *(f"grad {name}" for name, _ in model.named_parameters()),
    }
    assert max(entry.values()) < 1e-12, entry


def test_compare_backends_on_a_function(accel_backend):
    def fn(x, w):
        return gpunn.functional.linear(x, w, activation="tanh").sum(axis=1)

    report = gpunn.testing.compare_backends(
        fn, [gpunn.randn(3, 4)], backends=[accel_backend], params=[gpunn.randn(2, 4)]
    )
    assert set(report[accel_backend]) == {"output 0", "grad param 0", "grad input 0"}
    assert max(report[accel_backend].values()) < 1e-5, report


def test_lecture_example_on_every_backend_matches_the_reference(accel_backend):
    def J(x, y, z):
        return 4 * (x + y * z)

    xs = [gpunn.tensor(v) for v in (2.0, 3.0, 4.0)]
    report = gpunn.testing.compare_backends(J, xs, backends=[accel_backend])
    assert set(report[accel_backend]) == {"output 0"} | {f"grad input {i}" for i in range(3)}
    assert max(report[accel_backend].values()) == 0.0  # small integers: exact everywhere

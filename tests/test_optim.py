"""The optimizers against their update formulas written out, and their state."""

import numpy as np
import pytest

import gpunn
from gpunn import nn


def _param(values, backend):
    return nn.Parameter(gpunn.tensor(np.asarray(values, np.float64), backend=backend))


def _grad(p, values):
    p.grad = gpunn.tensor(np.asarray(values, np.float64), backend=p.backend)


def test_sgd_with_momentum_and_weight_decay(backend):
    p = _param([1.0, -2.0], backend)
    opt = gpunn.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    w, buf = np.array([1.0, -2.0]), np.zeros(2)
    for g in ([0.5, 0.5], [-1.0, 2.0], [0.25, 0.0]):
        _grad(p, g)
        opt.step()
        d = np.array(g) + 0.01 * w
        buf = 0.9 * buf + d  # PyTorch: first buffer is the gradient itself; 0.9*0 + d is the same
        w = w - 0.1 * buf
    np.testing.assert_allclose(p.numpy(), w, rtol=1e-12)


def test_plain_sgd(backend):
    p = _param([1.0, 2.0], backend)
    opt = gpunn.optim.SGD([p], lr=0.5)
    _grad(p, [1.0, -1.0])
    opt.step()
    np.testing.assert_allclose(p.numpy(), [0.5, 2.5])


def test_adam_matches_its_formula(backend):
    p = _param([0.5, -1.5, 3.0], backend)
    opt = gpunn.optim.Adam([p], lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    w, m, v = np.array([0.5, -1.5, 3.0]), np.zeros(3), np.zeros(3)
    for t, g in enumerate(([1.0, 0.0, -2.0], [0.5, 0.5, 0.5], [-3.0, 1.0, 0.1]), start=1):
        _grad(p, g)
        opt.step()
        d = np.array(g) + 0.1 * w
        m = 0.8 * m + 0.2 * d
        v = 0.99 * v + 0.01 * d * d
        m_hat, v_hat = m / (1 - 0.8**t), v / (1 - 0.99**t)
        w = w - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-6)
    np.testing.assert_allclose(p.numpy(), w, rtol=1e-10)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_a_found_inf_flag_skips_the_update_and_adam_takes_back_its_step_count(backend, kind):
    """optimizer.step(found_inf=flag), as the float16 GradScaler calls it: a true flag
    leaves parameters, state and step counts as if the step had not been taken."""
    make = {
        "sgd": lambda q: gpunn.optim.SGD([q], lr=0.1, momentum=0.9, weight_decay=0.1),
        "adam": lambda q: gpunn.optim.Adam([q], lr=0.01, weight_decay=0.1),
    }[kind]
    p = _param([0.5, -1.5, 3.0], backend)
    opt = make(p)
    flag = lambda found: p.backend_object.xp.asarray(np.bool_(found))  # noqa: E731
    _grad(p, [1.0, 0.0, -2.0])
    opt.step(found_inf=flag(False))
    after_one = p.numpy().copy()
    _grad(p, [0.5, 0.5, 0.5])
    opt.step(found_inf=flag(True))  # skipped
    np.testing.assert_array_equal(p.numpy(), after_one)
    if kind == "adam":
        assert opt.state[0]["step"] == 1
    opt.step(found_inf=flag(False))
    # the same as one optimizer that never saw the skipped step
    p_twin = _param([0.5, -1.5, 3.0], backend)
    twin = make(p_twin)
    for g in ([1.0, 0.0, -2.0], [0.5, 0.5, 0.5]):
        _grad(p_twin, g)
        twin.step()
    np.testing.assert_array_equal(p.numpy(), p_twin.numpy())
    if kind == "adam":
        assert opt.state[0]["step"] == twin.state[0]["step"] == 2


def test_parameters_without_grad_are_skipped_and_zero_grad_clears():
    a, b = _param([1.0], "numpy"), _param([1.0], "numpy")
    opt = gpunn.optim.SGD([a, b], lr=1.0)
    _grad(a, [1.0])
    opt.step()
    assert a.numpy()[0] == 0.0 and b.numpy()[0] == 1.0
    opt.zero_grad()
    assert a.grad is None


def test_state_dict_round_trip_gives_identical_updates(tmp_path):
    def make():
        gpunn.manual_seed(0)
        model = nn.Linear(3, 2)
        return model, gpunn.optim.Adam(model.parameters(), lr=0.05)

    x = gpunn.randn(4, 3)
    model, opt = make()
    for _ in range(3):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    gpunn.save(
        {
            **{f"model.{k}": v for k, v in model.state_dict().items()},
            **{f"optim.{k}": v for k, v in opt.state_dict().items()},
        },
        tmp_path / "ck",
    )
    loaded = gpunn.load(tmp_path / "ck")
    model2, opt2 = make()
    model2.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("model.")})
    opt2.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("optim.")})
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    for (k, v), (_, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
        np.testing.assert_array_equal(v.numpy(), v2.numpy(), err_msg=k)


def test_bad_hyper_parameters_are_refused():
    p = _param([1.0], "numpy")
    with pytest.raises(ValueError, match="lr must be >= 0"):
        gpunn.optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="empty parameter list"):
        gpunn.optim.Adam([])


def test_optimizer_state_follows_its_parameters_to_another_backend():
    """Momentum survives Module.to: the slot moves with its parameter, it is not reset."""
    backends = gpunn.available_backends()
    if len(backends) < 2:
        pytest.skip("needs a second backend to move to")
    target = backends[1]
    results = []
    for move in (False, True):
        gpunn.manual_seed(0)
        model = nn.Linear(3, 2).double()
        opt = gpunn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x = gpunn.tensor(np.arange(6.0).reshape(2, 3))
        for step in range(3):
            if move and step == 1:
                model.to(target)
                x = x.to(target)
            opt.zero_grad()
            (model(x) ** 2).sum().backward()
            opt.step()
        assert all(s["momentum_buffer"].backend == model.weight.backend for s in opt.state)
        results.append(model.weight.numpy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-12)

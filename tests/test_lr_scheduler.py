"""The learning-rate schedules against torch.optim.lr_scheduler, step for step, and their
exact resume from a saved state."""

import numpy as np
import pytest

import gpunn
from gpunn import nn
from gpunn.optim import lr_scheduler as sched

torch = pytest.importorskip("torch", reason="PyTorch is the oracle of this file")

STEPS = 300

# name -> (optimizer kind, scheduler kwargs, groups): the same arguments for both libraries
CASES = {
    "step": ("sgd", lambda m: m.StepLR, dict(step_size=30, gamma=0.5)),
    "cosine": ("sgd", lambda m: m.CosineAnnealingLR, dict(T_max=70, eta_min=1e-4)),
    "cosine-adam-groups": ("adam2", lambda m: m.CosineAnnealingLR, dict(T_max=STEPS)),
    "onecycle-sgd": ("sgd", lambda m: m.OneCycleLR, dict(max_lr=0.5, total_steps=STEPS)),
    "onecycle-adam-3phase-linear": (
        "adam2",
        lambda m: m.OneCycleLR,
        dict(
            max_lr=[0.01, 0.02],
            epochs=6,
            steps_per_epoch=50,
            three_phase=True,
            anneal_strategy="linear",
            pct_start=0.25,
        ),
    ),
    "onecycle-no-momentum": (
        "sgd",
        lambda m: m.OneCycleLR,
        dict(max_lr=0.3, total_steps=STEPS, cycle_momentum=False),
    ),
    "lambda": ("sgd", lambda m: m.LambdaLR, dict(lr_lambda=lambda e: 0.97**e + 1 / (e + 1))),
    "lambda-per-group": (
        "adam2",
        lambda m: m.LambdaLR,
        dict(lr_lambda=[lambda e: 1.0 / (1 + e), lambda e: min(1.0, (e + 1) / 10)]),
    ),
}


def _optimizer(lib, kind, params):
    if kind == "sgd":
        return lib.optim.SGD(params, lr=0.1, momentum=0.9)
    groups = [{"params": params[:1]}, {"params": params[1:], "lr": 3e-3}]
    return lib.optim.Adam(groups, lr=1e-3)


def _gpunn_setup(name):
    kind, cls, kwargs = CASES[name]
    params = [nn.Parameter(gpunn.zeros(2)), nn.Parameter(gpunn.zeros(3))]
    opt = _optimizer(gpunn, kind, params)
    return params, opt, cls(sched)(opt, **kwargs)


def _momenta(opt, key):
    return [g[key] for g in opt.param_groups]


@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_matches_torch(name):
    kind, cls, kwargs = CASES[name]
    tparams = [torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)]
    topt = _optimizer(torch, kind, tparams)
    tsched = cls(torch.optim.lr_scheduler)(topt, **kwargs)
    params, opt, s = _gpunn_setup(name)
    for step in range(STEPS):
        assert s.get_last_lr() == tsched.get_last_lr(), f"step {step}"
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups]
        if kind == "sgd":
            assert _momenta(opt, "momentum") == _momenta(topt, "momentum"), f"step {step}"
        else:
            assert _momenta(opt, "beta1") == [g["betas"][0] for g in topt.param_groups]
        for p in params:
            p.grad = gpunn.ones(*p.shape)
        for p in tparams:
            p.grad = torch.ones(p.shape)
        opt.step()
        topt.step()
        if step < STEPS - 1 or not name.startswith("onecycle"):
            s.step()
            tsched.step()
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p.numpy(), t.detach().numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_from_a_saved_state_continues_exactly(tmp_path, name):
    def run(params, opt, s, n):
        lrs = []
        for _ in range(n):
            for p in params:
                p.grad = gpunn.ones(*p.shape)
            opt.step()
            s.step()
            lrs.append(s.get_last_lr())
        return lrs

    params, opt, s = _gpunn_setup(name)
    whole = run(params, opt, s, 200)
    params, opt, s = _gpunn_setup(name)
    first = run(params, opt, s, 120)
    gpunn.save(
        {
            **{f"p.{i}": p for i, p in enumerate(params)},
            **{f"o.{k}": v for k, v in opt.state_dict().items()},
            **{f"s.{k}": v for k, v in s.state_dict().items()},
        },
        tmp_path / "ck",
    )
    state = gpunn.load(tmp_path / "ck")
    params2, opt2, s2 = _gpunn_setup(name)  # a fresh process would build these anew
    for i, p in enumerate(params2):
        p.set_(state[f"p.{i}"].data.copy())
    s2.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("s.")})
    opt2.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("o.")})
    rest = run(params2, opt2, s2, 80)
    assert first + rest == whole
    run(params, opt, s, 80)
    for p, q in zip(params, params2):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_bad_arguments_are_refused():
    p = nn.Parameter(gpunn.zeros(2))
    with pytest.raises(TypeError, match="is not an Optimizer"):
        sched.StepLR(object(), 3)
    opt = gpunn.optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="total_steps, or epochs and steps_per_epoch"):
        sched.OneCycleLR(opt, max_lr=1.0)
    s = sched.OneCycleLR(opt, max_lr=1.0, total_steps=2)
    s.step()
    s.step()
    with pytest.raises(ValueError, match="stepped 3 times, but total_steps is 2"):
        s.step()
    with pytest.raises(KeyError, match="has no 'initial_lr'"):
        sched.StepLR(gpunn.optim.SGD([p], lr=0.1), 3, last_epoch=5)

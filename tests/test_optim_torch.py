"""AdamW, SGD with Nesterov momentum and parameter groups against torch.optim, step for step,
on every backend; their state_dict round trip; gradient clipping against torch.nn.utils."""

import numpy as np
import pytest

import gpunn
from gpunn import nn

torch = pytest.importorskip("torch", reason="PyTorch is the oracle of this file")

SHAPES = ((4, 3), (5,), (), (2, 2, 3))


def _pair(backend, dtype, seed=0):
    """The same random parameters for gpunn (on ``backend``) and for torch."""
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ours = [nn.Parameter(gpunn.tensor(v.copy(), backend=backend)) for v in values]
    theirs = [torch.tensor(v.copy(), requires_grad=True) for v in values]
    return ours, theirs


def _run(make_ours, make_theirs, backend, dtype, steps=6, seed=0):
    ours, theirs = _pair(backend, dtype, seed)
    opt, topt = make_ours(ours), make_theirs(theirs)
    rng = np.random.default_rng(seed + 1)
    for _ in range(steps):
        for p, t in zip(ours, theirs):
            g = rng.standard_normal(t.shape).astype(dtype)
            p.grad = gpunn.tensor(g, backend=backend)
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    return ours, theirs, opt


def _assert_match(ours, theirs, dtype):
    rtol, atol = (2e-5, 1e-6) if dtype == "float32" else (1e-12, 1e-14)
    for i, (p, t) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(p.numpy(), t.detach().numpy(), rtol=rtol, atol=atol, err_msg=i)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adamw_matches_torch(backend, dtype):
    ours, theirs, _ = _run(
        lambda ps: gpunn.optim.AdamW(ps, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.05),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.05),
        backend,
        dtype,
    )
    _assert_match(ours, theirs, dtype)


def test_adamw_defaults_are_pytorchs():
    p = nn.Parameter(gpunn.zeros(2))
    opt, ref = gpunn.optim.AdamW([p]), torch.optim.AdamW([torch.zeros(2, requires_grad=True)])
    d = ref.defaults
    assert (opt.lr, opt.betas, opt.eps, opt.weight_decay) == (
        d["lr"],
        d["betas"],
        d["eps"],
        d["weight_decay"],
    )
    assert opt.weight_decay == 1e-2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sgd_nesterov_matches_torch(backend, dtype):
    ours, theirs, _ = _run(
        lambda ps: gpunn.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
        backend,
        dtype,
    )
    _assert_match(ours, theirs, dtype)


def test_nesterov_without_momentum_is_refused():
    p = nn.Parameter(gpunn.zeros(2))
    with pytest.raises(ValueError, match="nesterov momentum needs momentum > 0"):
        gpunn.optim.SGD([p], lr=0.1, nesterov=True)


def test_param_groups_with_their_own_lr_match_torch(backend):
    def groups(ps, box):
        return [{"params": ps[:2], "lr": 0.1}, {"params": ps[2:], "weight_decay": 0.1}]

    ours, theirs, opt = _run(
        lambda ps: gpunn.optim.SGD(groups(ps, gpunn), lr=0.01, momentum=0.5),
        lambda ps: torch.optim.SGD(groups(ps, torch), lr=0.01, momentum=0.5),
        backend,
        "float64",
    )
    _assert_match(ours, theirs, "float64")
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    opt.lr = 0.3  # sets every group, as the training job's --lr does
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.3] and opt.lr == 0.3


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: gpunn.optim.AdamW(ps, lr=1e-2),
        lambda ps: gpunn.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        lambda ps: gpunn.optim.Adam([{"params": ps[:1], "lr": 0.1}, {"params": ps[1:]}]),
    ],
    ids=["adamw", "nesterov", "adam-groups"],
)
def test_state_dict_round_trip_continues_identically(tmp_path, make):
    rng = np.random.default_rng(3)
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(4)]

    def fresh():
        ps = [nn.Parameter(gpunn.tensor(np.ones(s))) for s in SHAPES]
        return ps, make(ps)

    def steps(ps, opt, gs):
        for g in gs:
            for p, x in zip(ps, g):
                p.grad = gpunn.tensor(x)
            opt.step()

    ps, opt = fresh()
    steps(ps, opt, grads[:2])
    gpunn.save({f"o.{k}": v for k, v in opt.state_dict().items()}, tmp_path / "ck")
    ps2, opt2 = fresh()
    for p, q in zip(ps, ps2):
        q.set_(p.data.copy())
    opt2.load_state_dict({k[2:]: v for k, v in gpunn.load(tmp_path / "ck").items()})
    assert [dict(g, params=None) for g in opt2.param_groups] == [
        dict(g, params=None) for g in opt.param_groups
    ]
    steps(ps, opt, grads[2:])
    steps(ps2, opt2, grads[2:])
    for p, q in zip(ps, ps2):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


# ---------------------------------------------------------------------- gradient clipping
def _with_grads(backend, dtype, scale, seed=4):
    ours, theirs = _pair(backend, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    for p, t in zip(ours, theirs):
        g = (scale * rng.standard_normal(t.shape)).astype(dtype)
        p.grad = gpunn.tensor(g, backend=backend)
        t.grad = torch.tensor(g)
    return ours, theirs


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "norm_type, max_norm, scale",
    [(2.0, 1.0, 1.0), (2.0, 100.0, 1.0), (1.0, 0.5, 3.0), ("inf", 0.2, 1.0), (3.0, 0.7, 2.0)],
)
def test_clip_grad_norm_matches_torch(backend, dtype, norm_type, max_norm, scale):
    ours, theirs = _with_grads(backend, dtype, scale)
    total = gpunn.nn.utils.clip_grad_norm_(ours, max_norm, norm_type)
    ref = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    assert total.shape == () and total.dtype == dtype and total.backend == backend
    np.testing.assert_allclose(total.numpy(), ref.numpy(), rtol=rtol)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=rtol, atol=1e-7)


def test_clip_grad_norm_reports_a_nonfinite_norm_only_when_asked(backend):
    ours, _ = _with_grads(backend, "float64", 1.0)
    ours[1].grad = gpunn.tensor(np.array([1.0, np.inf, 0, 0, 0]), backend=backend)
    before = [p.grad.numpy().copy() for p in ours]
    with pytest.raises(RuntimeError, match="total norm of order 2.0 .* is inf"):
        gpunn.nn.utils.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    for p, b in zip(ours, before):  # nothing scaled before the error
        np.testing.assert_array_equal(p.grad.numpy(), b)
    total = gpunn.nn.utils.clip_grad_norm_(ours, 1.0)
    assert np.isinf(total.numpy())


def test_clip_grad_norm_without_gradients_and_with_a_single_tensor():
    a = nn.Parameter(gpunn.tensor(np.ones(3)))
    assert float(gpunn.nn.utils.clip_grad_norm_([a], 1.0).numpy()) == 0.0
    a.grad = gpunn.tensor(np.array([3.0, 4.0, 0.0]))
    assert float(gpunn.nn.utils.clip_grad_norm_(a, 1.0).numpy()) == 5.0
    np.testing.assert_allclose(a.grad.numpy(), [0.6, 0.8, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="norm_type must be > 0"):
        gpunn.nn.utils.clip_grad_norm_(a, 1.0, norm_type=0)


def test_clip_grad_norm_refuses_mixed_dtypes():
    a, b = nn.Parameter(gpunn.tensor(np.ones(2))), nn.Parameter(gpunn.tensor(np.ones(2)))
    a.grad = gpunn.tensor(np.ones(2, np.float32))
    b.grad = gpunn.tensor(np.ones(2))
    with pytest.raises(gpunn.errors.DTypeError, match="clip_grad_norm_: gradients of several"):
        gpunn.nn.utils.clip_grad_norm_([a, b], 1.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clip_grad_value_matches_torch(backend, dtype):
    ours, theirs = _with_grads(backend, dtype, 1.0)
    ours[0].grad.data[0, 0] = np.nan  # stays nan, as in PyTorch
    theirs[0].grad[0, 0] = float(ours[0].grad.numpy()[0, 0])
    gpunn.nn.utils.clip_grad_value_(ours, 0.5)
    torch.nn.utils.clip_grad_value_(theirs, 0.5)
    for p, t in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad.numpy(), t.grad.numpy())

"""A table of op cases: inputs for every op of the backend contract, with the edge cases
(broadcasting, batch of one, sizes that do not divide evenly, stride 2, padding,
sequence length 1), drawn at random shapes from a seed.

``run_case(backend, case, dtype, layout, seed)`` runs one case forward and backward on a
backend and returns host arrays, so any backend can be compared with the reference.
Users can run their own backend through the same table (``gpunn.testing.compare_op``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class OpCase:
    """One way to call an op. ``make(rng, dtype)`` returns its positional inputs (host
    arrays, Python scalars or None); ``params`` are keyword settings; ``family`` picks
    the tolerance (``elementwise`` or ``reduce``). ``needs``: which positions ask for a
    gradient (None: every float array input); the backward must return None elsewhere."""

    name: str
    op: str
    make: object
    params: dict = field(default_factory=dict)
    family: str = "elementwise"
    differentiable: bool = True
    needs: tuple | None = None

    def __repr__(self):
        return self.name


TOLERANCES = {
    ("elementwise", "float32"): dict(rtol=1e-5, atol=1e-6),
    ("reduce", "float32"): dict(rtol=1e-4, atol=1e-5),
    ("elementwise", "float64"): dict(rtol=1e-12, atol=1e-13),
    ("reduce", "float64"): dict(rtol=1e-9, atol=1e-11),
}


def tolerance(case: OpCase, dtype) -> dict:
    return TOLERANCES[(case.family, np.dtype(dtype).name)]


def _n(rng, low, high):
    return int(rng.integers(low, high + 1))


def _normal(shape):
    return lambda rng, dt: rng.standard_normal(shape).astype(dt)


def _away_from_zero(rng, shape, dt):
    """Values with |x| in [0.1, 2): keeps kinks (relu at 0) and poles (1/x) out of reach."""
    return (rng.uniform(0.1, 2.0, shape) * rng.choice([-1, 1], shape)).astype(dt)


def _positive(rng, shape, dt):
    return rng.uniform(0.5, 2.0, shape).astype(dt)


def _elementwise_cases():
    cases = []
    shapes = [((4, 5), (4, 5)), ((3, 4), (4,)), ((2, 1, 5), (3, 1)), ((1, 3), (2, 1)), ((7,), ())]
    for op in ("add", "sub", "mul", "div"):
        for a, b in shapes:
            right = (
                _away_from_zero
                if op == "div"
                else (lambda rng, s, dt: rng.standard_normal(s).astype(dt))
            )
            cases.append(
                OpCase(
                    f"{op}{a}{b}",
                    op,
                    lambda rng, dt, a=a, b=b, right=right: [
                        rng.standard_normal(a).astype(dt),
                        right(rng, b, dt),
                    ],
                )
            )
        cases.append(
            OpCase(
                f"{op}-scalar-right",
                op,
                lambda rng, dt: [rng.standard_normal((3, 5)).astype(dt), 2.5],
            )
        )
        cases.append(
            OpCase(f"{op}-scalar-left", op, lambda rng, dt: [1.5, _away_from_zero(rng, (4, 3), dt)])
        )
    cases += [
        OpCase(
            "pow-array",
            "pow",
            lambda rng, dt: [_positive(rng, (3, 4), dt), rng.uniform(-2, 2, (3, 4)).astype(dt)],
        ),
        OpCase(
            "pow-broadcast",
            "pow",
            lambda rng, dt: [_positive(rng, (2, 3, 4), dt), rng.uniform(-2, 2, (4,)).astype(dt)],
        ),
        OpCase("pow-scalar2", "pow", lambda rng, dt: [rng.standard_normal((5, 3)).astype(dt), 2.0]),
        OpCase("pow-scalar-half", "pow", lambda rng, dt: [_positive(rng, (6,), dt), 0.5]),
        OpCase("neg", "neg", lambda rng, dt: [rng.standard_normal((3, 4)).astype(dt)]),
        OpCase("exp", "exp", lambda rng, dt: [rng.standard_normal((4, 6)).astype(dt)]),
        OpCase("log", "log", lambda rng, dt: [_positive(rng, (4, 6), dt)]),
        OpCase(
            "sigmoid",
            "sigmoid",
            lambda rng, dt: [
                np.concatenate([rng.standard_normal(20), [-40, -15, 15, 40]]).astype(dt)
            ],
        ),
        OpCase("tanh", "tanh", lambda rng, dt: [(3 * rng.standard_normal((5, 7))).astype(dt)]),
        OpCase("relu", "relu", lambda rng, dt: [_away_from_zero(rng, (6, 9), dt)]),
        OpCase("step", "step", lambda rng, dt: [_away_from_zero(rng, (4, 5), dt)]),
    ]
    return cases


def _matmul_cases():
    def mm(a, b):
        return lambda rng, dt: [
            rng.standard_normal(a).astype(dt),
            rng.standard_normal(b).astype(dt),
        ]

    cases = [
        OpCase("matmul-2d", "matmul", mm((5, 7), (7, 3)), family="reduce"),
        OpCase("matmul-row", "matmul", mm((1, 9), (9, 4)), family="reduce"),
        OpCase("matmul-batched", "matmul", mm((2, 5, 7), (2, 7, 3)), family="reduce"),
        OpCase("matmul-broadcast", "matmul", mm((3, 4, 6), (6, 2)), family="reduce"),
    ]
    for act in (None, "relu", "sigmoid", "tanh"):
        for n, bias in ((6, True), (1, True), (5, False)):
            cases.append(
                OpCase(
                    f"linear-{act}-n{n}-{'bias' if bias else 'nobias'}",
                    "linear",
                    lambda rng, dt, n=n, bias=bias: [
                        rng.standard_normal((n, 7)).astype(dt),
                        rng.standard_normal((5, 7)).astype(dt),
                        rng.standard_normal(5).astype(dt) if bias else None,
                    ],
                    {"activation": act},
                    family="reduce",
                )
            )
    return cases


def _shape_cases():
    x345 = _normal((3, 4, 5))
    one = lambda make: lambda rng, dt: [make(rng, dt)]
    cases = []
    for op in ("sum", "mean"):
        for axis, keep in ((None, False), (0, False), (2, True), ((0, 2), False), ((1, 2), True)):
            cases.append(
                OpCase(
                    f"{op}-{axis}-{keep}", op, one(x345), {"axis": axis, "keepdims": keep}, "reduce"
                )
            )
    cases += [
        OpCase("reshape", "reshape", one(x345), {"shape": (12, 5)}),
        OpCase("transpose", "transpose", one(x345), {"axes": (2, 0, 1)}),
        OpCase("getitem-int", "getitem", one(x345), {"index": 1}),
        OpCase("getitem-slice", "getitem", one(x345), {"index": (slice(None), slice(1, 3))}),
        OpCase("getitem-step", "getitem", one(x345), {"index": (Ellipsis, slice(None, None, 2))}),
        OpCase("getitem-array", "getitem", one(x345), {"index": np.array([0, 2, 0])}),
        OpCase("unstack-0", "unstack", one(x345), {"axis": 0}),
        OpCase("unstack-2", "unstack", one(x345), {"axis": 2}),
        OpCase(
            "unstack-len1",
            "unstack",
            lambda rng, dt: [rng.standard_normal((1, 4)).astype(dt)],
            {"axis": 0},
        ),
        OpCase(
            "stack-0",
            "stack",
            lambda rng, dt: [rng.standard_normal((3, 4)).astype(dt) for _ in range(3)],
            {"axis": 0},
        ),
        OpCase(
            "stack-2",
            "stack",
            lambda rng, dt: [rng.standard_normal((3, 4)).astype(dt) for _ in range(2)],
            {"axis": 2},
        ),
    ]
    return cases


def _softmax_and_loss_cases():
    cases = []
    for op in ("softmax", "log_softmax"):
        cases.append(
            OpCase(
                f"{op}-last",
                op,
                lambda rng, dt: [(3 * rng.standard_normal((6, 10))).astype(dt)],
                {"axis": 1},
                "reduce",
            )
        )
        cases.append(
            OpCase(
                f"{op}-first",
                op,
                lambda rng, dt: [rng.standard_normal((4, 3, 5)).astype(dt)],
                {"axis": 0},
                "reduce",
            )
        )
        cases.append(
            OpCase(
                f"{op}-large",
                op,
                lambda rng, dt: [np.array([[1000.0, 0.0, -1000.0], [50, 51, 52]], dt)],
                {"axis": 1},
                "reduce",
            )
        )
    cases += [
        OpCase(
            "mse_loss",
            "mse_loss",
            lambda rng, dt: [
                rng.standard_normal((8, 3)).astype(dt),
                rng.standard_normal((8, 3)).astype(dt),
            ],
            family="reduce",
        ),
        OpCase(
            "bce",
            "binary_cross_entropy",
            lambda rng, dt: [
                rng.uniform(0.05, 0.95, (9, 1)).astype(dt),
                rng.uniform(0, 1, (9, 1)).astype(dt),
            ],
            family="reduce",
        ),
        OpCase(
            "bce-logits",
            "binary_cross_entropy_with_logits",
            lambda rng, dt: [
                np.concatenate([rng.standard_normal(12), [-60, 60]]).astype(dt),
                rng.integers(0, 2, 14).astype(dt),
            ],
            family="reduce",
        ),
        OpCase(
            "cross-entropy",
            "cross_entropy",
            lambda rng, dt: [(2 * rng.standard_normal((7, 10))).astype(dt), rng.integers(0, 10, 7)],
            family="reduce",
        ),
        OpCase(
            "cross-entropy-n1",
            "cross_entropy",
            lambda rng, dt: [rng.standard_normal((1, 3)).astype(dt), np.array([2])],
            family="reduce",
        ),
    ]
    return cases


def _conv_cases():
    cases = []
    specs = [
        # (N, C, H, W, K, kh, kw, stride, padding)
        (2, 3, 8, 8, 4, 3, 3, (1, 1), (0, 0)),
        (2, 2, 9, 7, 3, 3, 3, (2, 2), (1, 1)),
        (1, 1, 12, 12, 6, 5, 5, (1, 1), (2, 2)),
        (3, 4, 7, 10, 2, 2, 3, (1, 2), (0, 1)),
        (2, 5, 6, 6, 3, 1, 1, (1, 1), (0, 0)),
        # 3x3 stride 1 with 8+ channels: the Numba backend's Winograd path (odd sizes leave
        # part of the last tile outside the output; padding 2 puts whole tiles in it)
        (2, 8, 7, 9, 8, 3, 3, (1, 1), (1, 1)),
        (1, 9, 6, 5, 10, 3, 3, (1, 1), (0, 2)),
        (1, 8, 2, 3, 9, 3, 3, (1, 1), (2, 0)),
    ]
    for n, c, h, w, k, kh, kw, s, p in specs:
        for bias in (True, False):
            cases.append(
                OpCase(
                    f"conv2d-n{n}c{c}{h}x{w}-k{k}@{kh}x{kw}-s{s[0]}{s[1]}-p{p[0]}{p[1]}-{'b' if bias else 'nob'}",
                    "conv2d",
                    lambda rng, dt, n=n, c=c, h=h, w=w, k=k, kh=kh, kw=kw, bias=bias: [
                        rng.standard_normal((n, c, h, w)).astype(dt),
                        rng.standard_normal((k, c, kh, kw)).astype(dt),
                        rng.standard_normal(k).astype(dt) if bias else None,
                    ],
                    {"stride": s, "padding": p},
                    family="reduce",
                )
            )
    pools = [
        ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0)),
        ((1, 2, 9, 7), (3, 3), (2, 2), (1, 1)),
        ((2, 1, 5, 6), (2, 2), (1, 1), (0, 0)),
        ((3, 2, 7, 9), (3, 2), (2, 1), (1, 0)),
        ((1, 2, 7, 9), (2, 2), (2, 2), (0, 0)),  # odd sizes: the last row and column unread
    ]
    for op in ("max_pool2d", "avg_pool2d"):
        for shape, k, s, p in pools:
            cases.append(
                OpCase(
                    f"{op}-{shape}-k{k}-s{s}-p{p}",
                    op,
                    # a permutation of distinct values: no ties, so every backend picks one maximum
                    lambda rng, dt, shape=shape: [
                        (rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0 - 3).astype(dt)
                    ],
                    {"kernel_size": k, "stride": s, "padding": p},
                    family="reduce",
                )
            )
    return cases


def _other_cases():
    return [
        OpCase(
            "dropout-0.3",
            "dropout",
            lambda rng, dt: [rng.standard_normal((6, 50)).astype(dt)],
            {"p": 0.3, "seed": 12345},
        ),
        OpCase(
            "dropout-0.5-3d",
            "dropout",
            lambda rng, dt: [rng.standard_normal((2, 3, 17)).astype(dt)],
            {"p": 0.5, "seed": 2**62 + 7},
        ),
        OpCase(
            "rnn-cell",
            "rnn_cell",
            lambda rng, dt: [
                rng.standard_normal((4, 6)).astype(dt),
                rng.standard_normal((4, 6)).astype(dt),
                (0.4 * rng.standard_normal((6, 6))).astype(dt),
            ],
            family="reduce",
        ),
        OpCase(
            "rnn-cell-b1",
            "rnn_cell",
            lambda rng, dt: [
                rng.standard_normal((1, 3)).astype(dt),
                rng.standard_normal((1, 3)).astype(dt),
                rng.standard_normal((3, 3)).astype(dt),
            ],
            family="reduce",
        ),
        OpCase(
            "lstm-cell",
            "lstm_cell",
            lambda rng, dt: [
                rng.standard_normal((5, 12)).astype(dt),
                rng.standard_normal((5, 3)).astype(dt),
                rng.standard_normal((5, 3)).astype(dt),
                (0.5 * rng.standard_normal((12, 3))).astype(dt),
            ],
            family="reduce",
        ),
        OpCase(
            "lstm-cell-b1",
            "lstm_cell",
            lambda rng, dt: [
                rng.standard_normal((1, 28)).astype(dt),
                rng.standard_normal((1, 7)).astype(dt),
                rng.standard_normal((1, 7)).astype(dt),
                rng.standard_normal((28, 7)).astype(dt),
            ],
            family="reduce",
        ),
    ]


def _normalization_cases():
    """batch_norm (training with and without running statistics, the cumulative mean of
    momentum=None, batch of one image, eval), layer_norm, embedding (repeated indices and a
    padding row), leaky_relu and gelu."""

    def bn(shape, affine, running, counter):
        def make(rng, dt):
            c = shape[1]
            return [
                rng.standard_normal(shape).astype(dt),
                rng.uniform(0.5, 1.5, c).astype(dt) if affine else None,
                rng.standard_normal(c).astype(dt) if affine else None,
                rng.standard_normal(c).astype(dt) if running else None,
                rng.uniform(0.5, 2.0, c).astype(dt) if running else None,
                np.array(counter, np.int64) if counter is not None else None,
            ]

        return make

    cases = [
        OpCase(
            name,
            "batch_norm",
            bn(shape, affine, running, counter),
            {"training": training, "momentum": momentum, "eps": 1e-5},
            family="reduce",
        )
        for name, shape, affine, running, counter, training, momentum in (
            ("batch-norm-2d-train", (3, 4, 5, 3), True, True, 0, True, 0.1),
            ("batch-norm-2d-train-b1-cumulative", (1, 3, 4, 5), True, True, 4, True, None),
            ("batch-norm-1d-train", (7, 5), True, True, 2, True, 0.3),
            ("batch-norm-1d-seq-plain", (4, 3, 6), False, False, None, True, 0.1),
            ("batch-norm-2d-eval", (2, 3, 5, 4), True, True, 9, False, 0.1),
            ("batch-norm-1d-eval-noaffine", (5, 6), False, True, None, False, 0.1),
            ("batch-norm-2d-train-360-per-channel", (5, 3, 9, 8), True, True, 1, True, 0.1),
        )
    ]

    def ln(shape, norm, weight, bias):
        return lambda rng, dt: [
            rng.standard_normal(shape).astype(dt),
            rng.uniform(0.5, 1.5, norm).astype(dt) if weight else None,
            rng.standard_normal(norm).astype(dt) if bias else None,
        ]

    for shape, norm, weight, bias in (
        ((4, 7), (7,), True, True),
        ((2, 3, 4, 5), (4, 5), True, True),
        ((1, 9), (9,), False, False),
        ((3, 2, 6), (6,), True, False),
        ((13, 70), (70,), True, True),
    ):
        cases.append(
            OpCase(
                f"layer-norm{shape}-over{norm}-{'w' if weight else ''}{'b' if bias else ''}",
                "layer_norm",
                ln(shape, norm, weight, bias),
                {"normalized_shape": norm, "eps": 1e-5},
                family="reduce",
            )
        )
    for name, idx, vocab, dim, padding_idx in (
        ("embedding", (5, 3), 7, 4, None),
        ("embedding-padding", (9,), 6, 5, 2),
        ("embedding-b1", (1,), 3, 2, None),
        ("embedding-many-repeats", (40,), 3, 6, 0),
    ):
        cases.append(
            OpCase(
                name,
                "embedding",
                lambda rng, dt, idx=idx, vocab=vocab, dim=dim: [
                    rng.integers(0, vocab, idx),
                    rng.standard_normal((vocab, dim)).astype(dt),
                ],
                {"padding_idx": padding_idx},
                family="reduce",
            )
        )
    for slope in (0.01, 0.2, -0.5):
        cases.append(
            OpCase(
                f"leaky-relu-{slope}",
                "leaky_relu",
                lambda rng, dt: [_away_from_zero(rng, (6, 9), dt)],
                {"negative_slope": slope},
            )
        )
    cases.append(
        OpCase(
            "leaky-relu-1x1",
            "leaky_relu",
            lambda rng, dt: [_away_from_zero(rng, (1, 1), dt)],
            {"negative_slope": 0.01},
        )
    )
    for approximate in ("none", "tanh"):
        cases.append(
            OpCase(
                f"gelu-{approximate}",
                "gelu",
                lambda rng, dt: [
                    np.concatenate(
                        [2 * rng.standard_normal(30), [-12.0, -6.0, -0.5, 0.0, 0.5, 6.0, 12.0]]
                    )
                    .reshape(1, 37)
                    .astype(dt)
                ],
                {"approximate": approximate},
            )
        )
        cases.append(
            OpCase(
                f"gelu-{approximate}-3d",
                "gelu",
                lambda rng, dt: [rng.standard_normal((2, 3, 5)).astype(dt)],
                {"approximate": approximate},
            )
        )
    return cases


def _sequence(rng, dt, t, b, i, h, gates, bias, cell_state):
    """Inputs of a whole-sequence recurrent op: X, h0 (, c0), W_ih, W_hh, b_ih, b_hh."""
    draw = lambda shape, scale=1.0: (scale * rng.standard_normal(shape)).astype(dt)
    rows = gates * h
    states = [draw((b, h))] + ([draw((b, h))] if cell_state else [])
    weights = [draw((rows, i), 0.5), draw((rows, h), 0.5)]
    biases = [draw(rows, 0.5), draw(rows, 0.5)] if bias else [None, None]
    return [draw((t, b, i)), *states, *weights, *biases]


def _recurrent_cases():
    cases = []
    # (T, B, I, H, bias): sizes that divide nothing, one step, a batch of one
    specs = [(4, 3, 5, 7, True), (1, 2, 3, 4, True), (3, 1, 2, 3, False), (5, 1, 7, 5, True)]
    for t, b, i, h, bias in specs:
        tag = f"T{t}-B{b}-I{i}-H{h}-{'bias' if bias else 'nobias'}"
        for act in ("tanh", "relu"):
            cases.append(
                OpCase(
                    f"rnn-{act}-{tag}",
                    "rnn",
                    lambda rng, dt, t=t, b=b, i=i, h=h, bias=bias: _sequence(
                        rng, dt, t, b, i, h, 1, bias, False
                    ),
                    {"nonlinearity": act},
                    family="reduce",
                )
            )
        cases.append(
            OpCase(
                f"lstm-{tag}",
                "lstm",
                lambda rng, dt, t=t, b=b, i=i, h=h, bias=bias: _sequence(
                    rng, dt, t, b, i, h, 4, bias, True
                ),
                family="reduce",
            )
        )
        cases.append(
            OpCase(
                f"gru-{tag}",
                "gru",
                lambda rng, dt, t=t, b=b, i=i, h=h, bias=bias: _sequence(
                    rng, dt, t, b, i, h, 3, bias, False
                ),
                family="reduce",
            )
        )
    return cases


def _small_cases():
    """0-d and one-element shapes for every op family where they are legal: a gradient must
    come back with its input's exact shape (never (1,) for a 0-d input)."""
    x = lambda shape: _normal(shape)
    one = lambda make: lambda rng, dt: [make(rng, dt)]
    two = lambda a, b, right=None: (
        lambda rng, dt: [
            rng.standard_normal(a).astype(dt),
            (right or (lambda rng, s, dt: rng.standard_normal(s).astype(dt)))(rng, b, dt),
        ]
    )
    cases = []
    for op in ("add", "sub", "mul", "div"):
        right = _away_from_zero if op == "div" else None
        for a, b in (((), ()), ((), (3, 2)), ((2, 3), ()), ((1,), ()), ((1, 1), (1,))):
            cases.append(OpCase(f"{op}{a}{b}", op, two(a, b, right)))
        cases.append(
            OpCase(f"{op}-0d-scalar", op, lambda rng, dt: [rng.standard_normal(()).astype(dt), 2.5])
        )
    for a, b in (((), ()), ((1,), ()), ((), (2, 1))):
        cases.append(
            OpCase(
                f"pow{a}{b}",
                "pow",
                lambda rng, dt, a=a, b=b: [_positive(rng, a, dt), rng.uniform(-2, 2, b).astype(dt)],
            )
        )
    cases.append(OpCase("pow-0d-scalar", "pow", lambda rng, dt: [_positive(rng, (), dt), 3.0]))
    for shape in ((), (1,), (1, 1)):
        for op in ("neg", "exp", "tanh", "sigmoid"):
            cases.append(OpCase(f"{op}{shape}", op, one(x(shape))))
        for op in ("relu", "step"):
            cases.append(
                OpCase(f"{op}{shape}", op, lambda rng, dt, s=shape: [_away_from_zero(rng, s, dt)])
            )
        cases.append(OpCase(f"log{shape}", "log", lambda rng, dt, s=shape: [_positive(rng, s, dt)]))
        cases.append(OpCase(f"cast{shape}", "cast", one(x(shape)), {"dtype": "other"}))
        cases.append(OpCase(f"dropout{shape}", "dropout", one(x(shape)), {"p": 0.3, "seed": 7}))
    for op in ("sum", "mean"):
        for shape, axis, keep in (
            ((), None, False),
            ((), None, True),
            ((1,), None, False),
            ((1,), 0, False),
            ((1, 1), 1, True),
            ((3, 1), 1, False),
        ):
            cases.append(
                OpCase(
                    f"{op}{shape}-{axis}-{keep}",
                    op,
                    one(x(shape)),
                    {"axis": axis, "keepdims": keep},
                    "reduce",
                )
            )
    cases += [
        OpCase("reshape-0d-to-11", "reshape", one(x(())), {"shape": (1, 1)}),
        OpCase("reshape-1-to-0d", "reshape", one(x((1,))), {"shape": ()}),
        OpCase("transpose-0d", "transpose", one(x(())), {"axes": ()}),
        OpCase("transpose-111", "transpose", one(x((1, 1, 1))), {"axes": (2, 0, 1)}),
        OpCase("getitem-to-0d", "getitem", one(x((3,))), {"index": 1}),
        OpCase("getitem-1-to-0d", "getitem", one(x((1,))), {"index": 0}),
        OpCase("getitem-0d-ellipsis", "getitem", one(x(())), {"index": Ellipsis}),
        OpCase("unstack-to-0d", "unstack", one(x((3,))), {"axis": 0}),
        OpCase("stack-0d", "stack", two((), ())),
        OpCase("matmul-1x1", "matmul", two((1, 1), (1, 1)), family="reduce"),
        OpCase("matmul-inner1", "matmul", two((3, 1), (1, 2)), family="reduce"),
        OpCase(
            "linear-1-1-1",
            "linear",
            lambda rng, dt: [
                rng.standard_normal((1, 1)).astype(dt),
                rng.standard_normal((1, 1)).astype(dt),
                rng.standard_normal(1).astype(dt),
            ],
            {"activation": None},
            family="reduce",
        ),
        OpCase(
            "linear-tanh-out1",
            "linear",
            lambda rng, dt: [
                rng.standard_normal((4, 3)).astype(dt),
                rng.standard_normal((1, 3)).astype(dt),
                rng.standard_normal(1).astype(dt),
            ],
            {"activation": "tanh"},
            family="reduce",
        ),
        OpCase("mse_loss-0d", "mse_loss", two((), ()), family="reduce"),
        OpCase("mse_loss-1", "mse_loss", two((1,), (1,)), family="reduce"),
        OpCase(
            "bce-1",
            "binary_cross_entropy",
            lambda rng, dt: [
                rng.uniform(0.05, 0.95, (1, 1)).astype(dt),
                rng.uniform(0, 1, (1, 1)).astype(dt),
            ],
            family="reduce",
        ),
        OpCase(
            "bce-0d",
            "binary_cross_entropy",
            lambda rng, dt: [
                rng.uniform(0.05, 0.95, ()).astype(dt),
                rng.uniform(0, 1, ()).astype(dt),
            ],
            family="reduce",
        ),
        OpCase(
            "bce-logits-0d",
            "binary_cross_entropy_with_logits",
            lambda rng, dt: [rng.standard_normal(()).astype(dt), np.asarray(1.0, dt)],
            family="reduce",
        ),
        OpCase(
            "cross-entropy-1class",
            "cross_entropy",
            lambda rng, dt: [rng.standard_normal((1, 1)).astype(dt), np.array([0])],
            family="reduce",
        ),
        OpCase(
            "conv2d-1x1x1x1",
            "conv2d",
            lambda rng, dt: [
                rng.standard_normal((1, 1, 1, 1)).astype(dt),
                rng.standard_normal((1, 1, 1, 1)).astype(dt),
                rng.standard_normal(1).astype(dt),
            ],
            {"stride": (1, 1), "padding": (0, 0)},
            family="reduce",
        ),
    ]
    for op in ("max_pool2d", "avg_pool2d"):
        cases.append(
            OpCase(
                f"{op}-1x1x1x1",
                op,
                one(x((1, 1, 1, 1))),
                {"kernel_size": (1, 1), "stride": (1, 1), "padding": (0, 0)},
                family="reduce",
            )
        )
    for op in ("softmax", "log_softmax"):
        cases.append(OpCase(f"{op}-len1-axis", op, one(x((4, 1))), {"axis": 1}, "reduce"))
        cases.append(OpCase(f"{op}-1", op, one(x((1,))), {"axis": 0}, "reduce"))
    return [replace(c, make=_as_arrays(c.make)) for c in cases]


def _as_arrays(make):
    """``make`` with NumPy scalars (what ``rng.standard_normal(())`` returns) turned into
    0-d arrays, so that they are tensor inputs rather than Python-number constants."""
    return lambda rng, dt: [
        np.asarray(v) if isinstance(v, np.generic) else v for v in make(rng, dt)
    ]


def _cast_cases():
    return [
        OpCase(
            "cast",
            "cast",
            lambda rng, dt: [rng.standard_normal((3, 4)).astype(dt)],
            {"dtype": "other"},
        )
    ]


def input_needs(case: OpCase, inputs) -> tuple:
    """Per input of ``case``: does the backward compute its gradient? Float arrays only, and
    only at the positions ``case.needs`` marks."""
    floats = tuple(isinstance(x, np.ndarray) and x.dtype.kind == "f" for x in inputs)
    if case.needs is None:
        return floats
    return tuple(f and i < len(case.needs) and case.needs[i] for i, f in enumerate(floats))


def _partial_grad_variants(cases):
    """For each case with several float inputs, the same case with only its first, and with
    only its last, float input requiring grad."""
    variants = []
    for case in cases:
        inputs = case.make(np.random.default_rng(0), np.dtype(np.float64))
        floats = [i for i, f in enumerate(input_needs(case, inputs)) if f]
        if len(floats) < 2:
            continue
        for tag, keep in (("first", floats[0]), ("last", floats[-1])):
            needs = tuple(i == keep for i in range(len(inputs)))
            variants.append(replace(case, name=f"{case.name}-grad-{tag}-only", needs=needs))
    return variants


_ALL_GRADS: list[OpCase] = (
    _elementwise_cases()
    + _matmul_cases()
    + _shape_cases()
    + _softmax_and_loss_cases()
    + _conv_cases()
    + _normalization_cases()
    + _other_cases()
    + _recurrent_cases()
    + _cast_cases()
    + _small_cases()
)
OP_CASES: list[OpCase] = _ALL_GRADS + _partial_grad_variants(_ALL_GRADS)


@dataclass(frozen=True)
class UpdateCase:
    name: str
    op: str
    params: dict

    def __repr__(self):
        return self.name


UPDATE_CASES = [
    UpdateCase("sgd-plain", "sgd_update", dict(lr=0.1, momentum=0.0, weight_decay=0.0)),
    UpdateCase("sgd-momentum-wd", "sgd_update", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    UpdateCase(
        "adam",
        "adam_update",
        dict(step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0),
    ),
    UpdateCase(
        "adam-wd-step7",
        "adam_update",
        dict(step=7, lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1),
    ),
    UpdateCase(
        "sgd-nesterov-wd",
        "sgd_update",
        dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
    ),
    UpdateCase(
        "adamw-step3",
        "adam_update",
        dict(step=3, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, decoupled=True),
    ),
    # the float16 loss scaler's found-inf flag: set, the update changes nothing
    UpdateCase(
        "sgd-momentum-skipped",
        "sgd_update",
        dict(lr=0.05, momentum=0.9, weight_decay=0.01, skip=True),
    ),
    UpdateCase(
        "sgd-momentum-not-skipped",
        "sgd_update",
        dict(lr=0.05, momentum=0.9, weight_decay=0.01, skip=False),
    ),
    UpdateCase(
        "adam-skipped",
        "adam_update",
        dict(step=3, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, skip=True),
    ),
    UpdateCase(
        "adamw-not-skipped",
        "adam_update",
        dict(
            step=3,
            lr=1e-2,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            weight_decay=0.01,
            decoupled=True,
            skip=False,
        ),
    ),  # fmt: skip
    UpdateCase("clip-norm-2", "clip_grad_norm_update", dict(max_norm=1.0, norm_type=2.0)),
    UpdateCase("clip-norm-1-large", "clip_grad_norm_update", dict(max_norm=1e3, norm_type=1.0)),
    UpdateCase(
        "clip-norm-inf", "clip_grad_norm_update", dict(max_norm=0.5, norm_type=float("inf"))
    ),
    UpdateCase("clip-norm-3", "clip_grad_norm_update", dict(max_norm=0.7, norm_type=3.0)),
    UpdateCase("clip-value", "clip_grad_value_update", dict(clip_value=0.4)),
]


def _to_backend(be, value, layout):
    if isinstance(value, np.ndarray):
        host = np.ascontiguousarray(value).reshape(value.shape)  # (it makes 0-d arrays 1-d)
        native = be.asarray(host)
        if layout == "strided" and value.ndim >= 2:
            native = be.xp.repeat(native, 2, axis=-1)[..., ::2]
        return native
    return value


def resolve_params(case: OpCase, dtype) -> dict:
    """The case's keyword settings for ``dtype`` (``dtype="other"``: the other float dtype)."""
    params = dict(case.params)
    if params.get("dtype") == "other":
        params["dtype"] = np.dtype(np.float64 if np.dtype(dtype) == np.float32 else np.float32)
    return params


def run_case(be, case: OpCase, dtype, layout="C", seed=0):
    """Run ``case`` forward and backward on ``be``, asking for the gradients of
    ``input_needs(case, inputs)``. Returns (inputs, Y, grads, dYs) as host values: Y a
    tuple of arrays; grads the backward's tuple as it came (None where not needed)."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    inputs = case.make(rng, dtype)
    params = resolve_params(case, dtype)
    native = [_to_backend(be, x, layout) for x in inputs]
    Y, saved = getattr(be, case.op + "_forward")(*native, **params)
    Ys = Y if isinstance(Y, tuple) else (Y,)
    dYs = tuple(rng.standard_normal(np.shape(y)).astype(y.dtype) for y in Ys)
    native_dY = tuple(be.asarray(d) for d in dYs)
    needs = input_needs(case, inputs)
    grads = getattr(be, case.op + "_backward")(
        native_dY if isinstance(Y, tuple) else native_dY[0], saved, needs
    )
    to_host = lambda a: None if a is None else np.asarray(be.to_numpy(a))
    return inputs, tuple(to_host(y) for y in Ys), tuple(to_host(g) for g in grads), dYs


def run_update(be, case: UpdateCase, dtype, seed=0, shapes=((5, 3), (7,), (2, 3, 4), (), (1,))):
    """Apply one update to random parameters on ``be``; returns the host params and state
    (for the clipping ops: the gradients, and the returned norm as the one state slot)."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    draw = lambda: [rng.standard_normal(s).astype(dtype) for s in shapes]
    params, grads = draw(), draw()
    p = [be.asarray(x.copy()) for x in params]
    g = [be.asarray(x) for x in grads]
    settings = dict(case.params)
    if "skip" in settings:  # a 0-d bool array on the backend, as GradScaler's flag
        settings["skip"] = be.xp.asarray(np.bool_(settings["skip"]))
    if case.op == "clip_grad_norm_update":
        total = be.clip_grad_norm_update(g, **case.params)
        p, slots = g, [[total]]
    elif case.op == "clip_grad_value_update":
        be.clip_grad_value_update(g, **case.params)
        p, slots = g, []
    elif case.op == "sgd_update":
        state = [be.asarray(x) for x in draw()] if case.params["momentum"] else [None] * len(shapes)
        be.sgd_update(p, g, state, **settings)
        slots = [state]
    else:
        m = [be.asarray(x) for x in draw()]
        v = [be.asarray(np.abs(x)) for x in draw()]
        be.adam_update(p, g, m, v, **settings)
        slots = [m, v]
    host = lambda xs: [None if x is None else np.asarray(be.to_numpy(x)) for x in xs]
    return host(p), [host(s) for s in slots]

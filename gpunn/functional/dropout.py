"""Inverted dropout with masks from gpunn's seeded generator."""

from __future__ import annotations

from gpunn.autograd import apply
from gpunn.functional.checks import check_float


def dropout(x, p=0.5, training=True):
    """Zero each element with probability p and scale the rest by 1/(1 - p).

    The mask is a counter-based hash of a seed drawn from gpunn's generator and the
    element index, so one ``manual_seed`` gives one mask on every backend. Identity when
    ``training`` is False or p == 0.
    """
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    check_float("dropout", x)
    if not training or p == 0:
        return x
    from gpunn.cuda.graphs import replayed
    from gpunn.random import next_seed

    # a captured step draws its seed again at every replay (see gpunn.cuda.graphs)
    return apply("dropout", x, p=float(p), seed=replayed(next_seed))

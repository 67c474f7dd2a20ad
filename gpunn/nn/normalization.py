"""Normalisation layers: BatchNorm1d, BatchNorm2d, LayerNorm, with PyTorch's names,
defaults, parameters and buffers (so a PyTorch state_dict loads key for key)."""

from __future__ import annotations

from gpunn import functional as F
from gpunn.errors import ShapeError
from gpunn.nn.module import Module, Parameter
from gpunn.tensor import ones, zeros


class _BatchNorm(Module):
    """Batch normalisation over channel axis 1. Parameters ``weight`` (ones) and ``bias``
    (zeros) of shape (num_features,) when ``affine``; buffers ``running_mean`` (zeros),
    ``running_var`` (ones) and ``num_batches_tracked`` (0-d int64) when
    ``track_running_stats``.

    Training normalises with the batch statistics (biased variance) and updates the
    running ones (unbiased variance) with ``momentum``, or with a cumulative mean when
    ``momentum`` is None; ``eval()`` normalises with the running statistics (with the
    batch's when they are not tracked).
    """

    _ndims: tuple = ()
    _layout = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(ones(num_features)) if affine else None
        self.bias = Parameter(zeros(num_features)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", zeros(num_features))
            self.register_buffer("running_var", ones(num_features))
            self.register_buffer("num_batches_tracked", zeros(dtype="int64"))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            be = self.running_mean.backend
            dtype = self.running_mean.dtype
            self.running_mean = zeros(self.num_features, dtype=dtype, backend=be)
            self.running_var = ones(self.num_features, dtype=dtype, backend=be)
            self.num_batches_tracked = zeros(dtype="int64", backend=be)

    def forward(self, x):
        if x.ndim not in self._ndims:
            want = " or ".join(f"{n}-d" for n in self._ndims)
            raise ShapeError(
                f"{type(self).__name__}: expected {want} input {self._layout}, got shape {x.shape}"
            )
        use_batch_stats = self.training or self.running_mean is None
        tracking = self.training and self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            training=use_batch_stats,
            momentum=self.momentum,
            eps=self.eps,
            num_batches_tracked=self.num_batches_tracked if tracking else None,
        )

    def extra_repr(self):
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) input, per channel C."""

    _ndims = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) input, per channel C."""

    _ndims = (4,)
    _layout = "(N, C, H, W)"


class LayerNorm(Module):
    """Layer normalisation over the last ``len(normalized_shape)`` axes. Parameters
    ``weight`` (ones) and ``bias`` (zeros, unless ``bias=False``) of shape
    ``normalized_shape`` when ``elementwise_affine``."""

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
    ):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        self.normalized_shape = tuple(shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        self.weight = Parameter(ones(*self.normalized_shape)) if elementwise_affine else None
        self.bias = (
            Parameter(zeros(*self.normalized_shape)) if elementwise_affine and bias else None
        )

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )

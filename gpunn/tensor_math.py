"""The arithmetic operators and method forms (``x.sum()``, ``x.relu()``) of a Tensor.

Each one is a call of the ``gpunn.functional`` op of the same name; :class:`Tensor` mixes
this class in, so ``tensor.py`` keeps only what a tensor is (data, backend, gradient, moves).
"""

from __future__ import annotations


class TensorMath:
    """Operators and methods over ``gpunn.functional``, mixed into :class:`gpunn.Tensor`."""

    __slots__ = ()

    # ------------------------------------------------------------------ operators
    def __add__(self, other):
        return F.add(self, other)

    def __radd__(self, other):
        return F.add(other, self)

    def __sub__(self, other):
        return F.sub(self, other)

    def __rsub__(self, other):
        return F.sub(other, self)

    def __mul__(self, other):
        return F.mul(self, other)

    def __rmul__(self, other):
        return F.mul(other, self)

    def __truediv__(self, other):
        return F.div(self, other)

    def __rtruediv__(self, other):
        return F.div(other, self)

    def __pow__(self, other):
        return F.pow(self, other)

    def __rpow__(self, other):
        return F.pow(other, self)

    def __matmul__(self, other):
        return F.matmul(self, other)

    def __rmatmul__(self, other):
        return F.matmul(other, self)

    def __neg__(self):
        return F.neg(self)

    def __pos__(self):
        return self

    def __getitem__(self, index):
        return F.getitem(self, index)

    # ------------------------------------------------------------------ methods
    def sum(self, axis=None, keepdims=False):
        return F.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return F.mean(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        return F.reshape(
            self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
        )

    def view(self, *shape):
        return self.reshape(*shape)

    def flatten(self, start_dim=0):
        return F.reshape(self, self.shape[:start_dim] + (-1,))

    def transpose(self, *axes):
        """Permute the axes as NumPy does: no argument reverses them."""
        if len(axes) == 1 and not isinstance(axes[0], int):
            axes = tuple(axes[0])
        return F.transpose(self, axes or None)

    @property
    def T(self):
        return F.transpose(self, None)

    def exp(self):
        return F.exp(self)

    def log(self):
        return F.log(self)

    def sigmoid(self):
        return F.sigmoid(self)

    def tanh(self):
        return F.tanh(self)

    def relu(self):
        return F.relu(self)

    def softmax(self, axis=-1):
        return F.softmax(self, axis)

    def log_softmax(self, axis=-1):
        return F.log_softmax(self, axis)


from gpunn import functional as F  # noqa: E402  (functional builds on Tensor)

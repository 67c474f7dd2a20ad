"""Module and Parameter: the containers layers are built from."""

from __future__ import annotations

from collections import OrderedDict

from gpunn.backends import backend_object
from gpunn.errors import CheckpointError
from gpunn.tensor import Tensor


class Parameter(Tensor):
    """A tensor a Module learns: a leaf that requires grad."""

    __slots__ = ()

    def __init__(self, data: Tensor, requires_grad: bool = True):
        source = data.detach() if isinstance(data, Tensor) else data
        super().__init__(source.data, source.backend_object, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of layers and models.

    Assigning a Parameter or a Module as an attribute registers it, in assignment order,
    under its attribute name; nested names are dotted (``fc1.weight``). Buffers
    (:meth:`register_buffer`) are state that is not learnt, such as batch norm's running
    statistics: saved in ``state_dict`` and moved by ``to`` like parameters.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before assigning")
        if name in self._buffers and (value is None or type(value) is Tensor):
            self._buffers[name] = value  # assigning to a buffer replaces it
            object.__setattr__(self, name, value)
            return
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        self._buffers.pop(name, None)
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ traversal
    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter) pairs: own parameters first, then each child's."""
        for name, p in self._parameters.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(prefix + name + ".")

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    # ------------------------------------------------------------------ buffers
    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        """Register ``tensor`` (a Tensor, or None) as state of this module that is not a
        parameter: in ``state_dict`` (unless ``persistent=False``), moved by ``to``, float
        buffers cast by ``float``/``double``; ``self.<name> = t`` later replaces it."""
        if tensor is not None and type(tensor) is not Tensor:
            raise TypeError(
                f"{type(self).__name__}.register_buffer: {name!r} must be a Tensor or None, "
                f"not {type(tensor).__name__}"
            )
        if name in self._parameters or name in self._modules:
            raise KeyError(f"{type(self).__name__}.register_buffer: {name!r} already exists")
        object.__setattr__(self, name, tensor)
        self._buffers[name] = tensor
        if not persistent:
            object.__setattr__(self, "_non_persistent", self._non_persistent | {name})

    _non_persistent: frozenset = frozenset()

    def named_buffers(self, prefix: str = ""):
        """(dotted name, buffer) pairs: own buffers first, then each child's (None skipped)."""
        for name, b in self._buffers.items():
            if b is not None:
                yield prefix + name, b
        for name, m in self._modules.items():
            yield from m.named_buffers(prefix + name + ".")

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    def _named_state(self, prefix: str = ""):
        """What ``state_dict`` holds, in PyTorch's order: per module its parameters, its
        persistent buffers, then each child's."""
        for name, p in self._parameters.items():
            yield prefix + name, p
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent:
                yield prefix + name, b
        for name, m in self._modules.items():
            yield from m._named_state(prefix + name + ".")

    def children(self):
        return iter(self._modules.values())

    def named_modules(self, prefix: str = ""):
        yield prefix.rstrip("."), self
        for name, m in self._modules.items():
            yield from m.named_modules(prefix + name + ".")

    def modules(self):
        for _, m in self.named_modules():
            yield m

    # ------------------------------------------------------------------ state
    def state_dict(self) -> OrderedDict:
        """Dotted name -> tensor sharing the parameter's (or buffer's) data (detached)."""
        return OrderedDict((n, p.detach()) for n, p in self._named_state())

    def load_state_dict(self, state, strict: bool = True) -> None:
        """Copy ``state`` (name -> Tensor or array) into the parameters, keeping each value's
        dtype. Missing, unexpected or mis-shaped keys raise CheckpointError naming the key."""
        own = dict(self._named_state())
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        if strict and (missing or extra):
            parts = []
            if missing:
                parts.append(f"missing keys: {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected keys: {', '.join(extra)}")
            raise CheckpointError(f"{type(self).__name__}.load_state_dict: " + "; ".join(parts))
        for name, p in own.items():
            if name not in state:
                continue
            value = state[name]
            host = value.numpy() if isinstance(value, Tensor) else value
            shape = tuple(getattr(host, "shape", ()))
            if shape != p.shape:
                raise CheckpointError(
                    f"{type(self).__name__}.load_state_dict: {name!r} has shape {shape}, "
                    f"the parameter has shape {p.shape}"
                )
            be = p.backend_object
            p.set_(be.copy(be.asarray(host)))
            p.grad = None

    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, backend: str):
        """Move every parameter (and its gradient) to ``backend``, in place; returns self."""
        backend_object(backend)  # an unknown or unavailable name raises before anything moves
        for p in self.parameters():
            p.to_(backend)
        for b in self.buffers():
            b.to_(backend)
        return self

    def _cast(self, dtype):
        for p in self.parameters():
            if p.dtype != dtype:
                p.set_(p.backend_object.astype(p.data, dtype))
                p.grad = None
        for b in self.buffers():
            if b.dtype.kind == "f" and b.dtype != dtype:
                b.set_(b.backend_object.astype(b.data, dtype))
        return self

    def float(self):
        """Convert every parameter to float32."""
        return self._cast("float32")

    def double(self):
        """Convert every parameter to float64."""
        return self._cast("float64")

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        if len(lines) == 1:
            return lines[0] + ")"
        return "\n".join(lines) + "\n)"

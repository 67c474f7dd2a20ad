"""The define-by-run graph: recording ops as nodes, and walking them backwards.

``apply(op, *inputs, **params)`` is the one way an op runs. It finds the backend the
inputs live on, calls ``<op>_forward`` there and, when grad mode is on and an input
requires grad, records a :class:`Node` holding what the backward needs. ``walk(root)``
lists the nodes in reverse topological order (iteratively, so graphs thousands of steps
deep are fine); ``backward`` visits them in that order, calls each ``<op>_backward`` once,
sums the gradients of tensors used more than once, and frees every node's saved arrays as
it goes. ``gpunn graph`` draws the same walk.
"""

from __future__ import annotations

import contextlib
import contextvars

from gpunn.amp import AUTOCAST_OPS, autocast_dtype
from gpunn.errors import BackendError, CaptureError, GraphError

_grad_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("gpunn_grad", default=True)


def is_grad_enabled() -> bool:
    return _grad_enabled.get()


@contextlib.contextmanager
def no_grad():
    """Inside the block no graph is recorded: outputs never require grad."""
    token = _grad_enabled.set(False)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


@contextlib.contextmanager
def enable_grad():
    token = _grad_enabled.set(True)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


class Node:
    """One recorded op: its backend, its inputs and what its backward needs."""

    __slots__ = ("op", "be", "inputs", "saved", "needs", "out_meta", "multi", "freed", "lowp")

    def __init__(self, op, be, inputs, saved, needs, out_meta, multi=False, lowp=None):
        self.op = op
        self.be = be
        self.inputs = inputs  # tuple of Tensor or None (non-tensor inputs), one per position
        self.saved = saved
        self.needs = needs
        self.out_meta = out_meta  # ((shape, dtype), ...) per output
        self.multi = multi  # the forward returned a tuple (maybe of one array): dY is a tuple
        self.freed = False
        self.lowp = lowp  # the autocast precision its forward ran in (None: none)

    def __repr__(self):
        return f"<Node {self.op} on {self.be.name}>"


def backend_of(op: str, inputs):
    """The backend shared by the tensor inputs of ``op``; raises naming both when they differ."""
    from gpunn.tensor import Tensor

    be = None
    first = None
    for i, x in enumerate(inputs):
        if isinstance(x, Tensor):
            if be is None:
                be, first = x._be, i
            elif x._be is not be:
                raise BackendError(
                    f"{op}: inputs live on different backends: input {first} on "
                    f"{be.name!r}, input {i} on {x._be.name!r}; move one with "
                    f".to({be.name!r}) or .to({x._be.name!r})"
                )
    if be is None:
        raise TypeError(f"{op}: expected at least one gpunn Tensor among the inputs")
    return be


def apply(op: str, *inputs, **params):
    """Run ``op`` forward on its inputs' backend and record it for backward when needed.

    ``inputs`` are Tensors, Python scalars or None (an absent bias); ``params`` are
    settings (axis, stride, ...). Returns a Tensor, or a tuple of Tensors for ops with
    several outputs.
    """
    from gpunn.tensor import Tensor

    be = backend_of(op, inputs)
    arrays = [x.data if isinstance(x, Tensor) else x for x in inputs]
    lowp = autocast_dtype() if op in AUTOCAST_OPS else None
    if lowp is None:
        Y, saved = getattr(be, op + "_forward")(*arrays, **params)
    else:
        with be.autocast(lowp):
            Y, saved = getattr(be, op + "_forward")(*arrays, **params)
    Y = tuple(_native(be, y) for y in Y) if isinstance(Y, tuple) else _native(be, Y)
    needs = tuple(isinstance(x, Tensor) and x.requires_grad for x in inputs)
    record = any(needs) and _grad_enabled.get()
    if isinstance(Y, tuple):
        outs = tuple(Tensor._wrap(y, be, record) for y in Y)
    else:
        outs = (Tensor._wrap(Y, be, record),)
    if record:
        node = Node(
            op,
            be,
            tuple(x if isinstance(x, Tensor) else None for x in inputs),
            saved,
            needs,
            tuple((o.data.shape, o.data.dtype) for o in outs),
            isinstance(Y, tuple),
            lowp,
        )
        for k, o in enumerate(outs):
            o._node = node
            o._out_index = k
    return outs if isinstance(Y, tuple) else outs[0]


def backward(root, grad, retain_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf) * grad into ``.grad`` of every leaf that requires grad.

    Each leaf's gradient is summed over the whole walk and added to ``.grad`` once at the
    end; then the leaf's post-accumulate hooks run (in the order the walk reached the
    leaves: roughly from the last layer to the first)."""
    if root._node is None:
        if root.requires_grad:  # a leaf: its gradient is the seed itself
            _finish_leaves({id(root): [root, grad]})
        return
    leaves: dict[int, list] = {}
    pending = {id(root._node): [None] * len(root._node.out_meta)}
    pending[id(root._node)][root._out_index] = grad
    for node in walk(root):
        grads = pending.pop(id(node), None)
        if node.freed:
            raise GraphError(
                f"backward through the graph a second time: the saved arrays of {node.op!r} "
                "were freed by the first backward; pass retain_graph=True to the first call"
            )
        if grads is None or all(g is None for g in grads):
            continue
        if not node.multi:
            dY = grads[0]
        else:
            dY = tuple(
                g if g is not None else node.be.zeros(shape, dtype)
                for g, (shape, dtype) in zip(grads, node.out_meta)
            )
        if node.lowp is None:
            in_grads = getattr(node.be, node.op + "_backward")(dY, node.saved, node.needs)
        else:
            with node.be.autocast(node.lowp):
                in_grads = getattr(node.be, node.op + "_backward")(dY, node.saved, node.needs)
        if len(in_grads) != len(node.inputs):
            raise GraphError(
                f"{node.op}_backward on {node.be.name!r} returned {len(in_grads)} gradients "
                f"for {len(node.inputs)} inputs"
            )
        for i, (x, need, g) in enumerate(zip(node.inputs, node.needs, in_grads)):
            if not need or g is None:
                continue
            # (a NumPy scalar in place of a 0-d array passes: it has shape () and a dtype)
            if g.shape != x.data.shape or g.dtype != x.data.dtype:
                raise GraphError(
                    f"{node.op}_backward on {node.be.name!r}: gradient of input {i} has shape "
                    f"{tuple(g.shape)} and dtype {g.dtype}, the input {x.shape} and {x.dtype}"
                )
            if x._node is None:
                entry = leaves.get(id(x))
                if entry is None:
                    leaves[id(x)] = [x, g]
                else:
                    entry[1] = entry[1] + g
            else:
                slot = pending.setdefault(id(x._node), [None] * len(x._node.out_meta))
                k = x._out_index
                slot[k] = g if slot[k] is None else slot[k] + g
        if not retain_graph:
            node.saved = None
            node.inputs = None
            node.freed = True
    _finish_leaves(leaves)


def _finish_leaves(leaves: dict) -> None:
    """Add each leaf's summed gradient to its ``.grad``, then run its hooks."""
    from gpunn.tensor import Tensor

    for x, g in leaves.values():
        be = x._be
        if x.grad is None:
            # ascontiguousarray turns a 0-d array into shape (1,): reshape to the leaf's shape
            g = be.xp.ascontiguousarray(g).reshape(x.data.shape)
        else:
            if getattr(be, "capturing", None):
                raise CaptureError(
                    f"backward: a leaf of shape {x.shape} already has a gradient; a captured "
                    "step cannot add to it (its sum would be a new array every replay): call "
                    "zero_grad() at the start of the step"
                )
            g = _native(be, x.grad.data + g)
        x.grad = Tensor._wrap(g, be, False)
    for x, _ in leaves.values():
        for hook in x._hooks or ():
            hook(x)


def walk(root) -> list[Node]:
    """The nodes ``root`` (a Tensor) was computed through, in the order a backward pass
    visits them: each node before the nodes that made its inputs (reverse topological
    order), each once. Empty when ``root`` is a leaf."""
    if root._node is None:
        return []
    order = _topological_order(root._node)
    order.reverse()
    return order


def _native(be, X):
    """``X`` as a native array of ``be``: NumPy returns a scalar, not a 0-d array, from
    arithmetic on 0-d arrays, and a tensor's data and gradients are always arrays."""
    return X if be.is_native(X) else be.asarray(X)


def _topological_order(root: Node) -> list[Node]:
    """Nodes reachable from ``root``, every node after all nodes of its inputs (iterative DFS)."""
    order: list[Node] = []
    visited: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node.inputs is None:
            continue  # freed: reported when reached in the backward walk
        for x in node.inputs:
            if x is not None and x._node is not None and id(x._node) not in visited:
                stack.append((x._node, False))
    return order

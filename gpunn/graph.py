"""``gpunn graph``: draw a computational graph as Graphviz DOT.

The graph is the one autograd records: every op is a :class:`gpunn.autograd.Node` whose
``inputs`` are the tensors it read. Walking it from the result gives the picture of the
lecture: leaves (inputs, parameters) on the left, ops in the middle, the result on the
right, and on each edge the value that flows forward and the gradient that flows back.

:func:`to_dot` turns any scalar result into DOT; :func:`expression` evaluates a formula
such as ``4*(x + y*z)`` safely (no ``eval``) into tensors; :func:`run` is the command.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess

import numpy as np

import gpunn
from gpunn import functional as F
from gpunn.autograd import walk
from gpunn.tensor import Tensor

LECTURE_EXPR = "4*(x + y*z)"
LECTURE_AT = {"x": 2.0, "y": 3.0, "z": 4.0}
LECTURE_NAMES = {"y * z": "u", "x + y * z": "v"}  # u = yz, v = x + u, J = 4v

_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**", "neg": "neg"}
_FUNCTIONS = {
    "exp": F.exp,
    "log": F.log,
    "sigmoid": F.sigmoid,
    "tanh": F.tanh,
    "relu": F.relu,
}
_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


class GraphError(ValueError):
    """An expression or a request the graph command cannot draw."""


# ---------------------------------------------------------------------- expressions
def parse_values(text: str | None) -> dict[str, float]:
    """``"x=2,y=3"`` -> {"x": 2.0, "y": 3.0}."""
    values = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise GraphError(f"--at expects name=value pairs such as x=2,y=3; got {part!r}")
        try:
            values[name] = float(value)
        except ValueError:
            raise GraphError(f"--at: {name}={value!r} is not a number") from None
    return values


def expression(text: str, values: dict[str, float], names: dict[str, str] | None = None):
    """Evaluate ``text`` on float64 scalar tensors that require grad.

    Allowed: numbers, variable names, ``+ - * / **``, unary minus, and the functions
    exp, log, sigmoid, tanh, relu. Variables missing from ``values`` are 1.

    Returns (result, variables by name, labels): ``labels`` maps id(tensor) of each
    intermediate to its name (``names[subexpression]`` or the subexpression itself) and
    id(node) of ops with a constant operand to a label such as ``* 4``.
    """
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise GraphError(f"cannot parse the expression {text!r}: {e.msg}") from None
    names = names or {}
    variables: dict[str, Tensor] = {}
    labels: dict[int, str] = {}
    keep: list = []  # keep intermediates alive so their ids stay unique

    def leaf(name):
        if name not in variables:
            variables[name] = gpunn.tensor(
                float(values.get(name, 1.0)), dtype="float64", requires_grad=True
            )
        return variables[name]

    def visit(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id in _FUNCTIONS:
                raise GraphError(f"{node.id} is a function: call it, as in {node.id}(x)")
            return leaf(node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            a, b = visit(node.left), visit(node.right)
            if not isinstance(a, Tensor) and not isinstance(b, Tensor):
                return _BINARY[type(node.op)](a, b)
            out = _BINARY[type(node.op)](a, b)
            const = a if not isinstance(a, Tensor) else b if not isinstance(b, Tensor) else None
            if const is not None and out._node is not None:
                symbol = _SYMBOLS.get(out._node.op, out._node.op)
                labels[id(out._node)] = (
                    f"{symbol} {const:g}" if const is b else f"{const:g} {symbol}"
                )
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            a = visit(node.operand)
            out = -a if isinstance(node.op, ast.USub) else a
            if not isinstance(out, Tensor):
                return out
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and len(node.args) == 1
            and not node.keywords
        ):
            a = visit(node.args[0])
            if not isinstance(a, Tensor):
                a = gpunn.tensor(a, dtype="float64")
            out = _FUNCTIONS[node.func.id](a)
        else:
            allowed = "numbers, names, + - * / **, unary -, " + ", ".join(_FUNCTIONS)
            raise GraphError(f"cannot draw {ast.unparse(node)!r}: expressions may use {allowed}")
        sub = ast.unparse(node)
        labels[id(out)] = names.get(sub, sub)
        keep.append(out)
        return out

    result = visit(tree.body)
    if not isinstance(result, Tensor):
        raise GraphError(f"{text!r} has no variable: nothing to differentiate")
    return result, variables, labels


# ---------------------------------------------------------------------- gradients
def gradients(root: Tensor):
    """Forward values are in the tensors; this walks the graph backwards like autograd but
    keeps every intermediate gradient and frees nothing.

    Returns (nodes in topological order, {(id(node), k): dJ/d output k},
    {id(leaf): dJ/d leaf}).
    """
    if root._node is None:
        raise GraphError("the result is not computed from anything that requires grad")
    order = walk(root)[::-1]  # topological: every node after the nodes of its inputs
    seed = root.backend_object.full(root.shape, 1, root.dtype)
    out_grads = {(id(root._node), root._out_index): seed}
    leaf_grads: dict[int, object] = {}
    for node in reversed(order):
        if node.freed:
            raise GraphError("the graph was freed by a backward(); draw it before backward")
        dYs = [out_grads.get((id(node), k)) for k in range(len(node.out_meta))]
        if all(g is None for g in dYs):
            continue
        if not node.multi:
            dY = dYs[0]
        else:
            dY = tuple(
                g if g is not None else node.be.zeros(shape, dtype)
                for g, (shape, dtype) in zip(dYs, node.out_meta)
            )
        in_grads = getattr(node.be, node.op + "_backward")(dY, node.saved, node.needs)
        for x, need, g in zip(node.inputs, node.needs, in_grads):
            if not need or g is None:
                continue
            key = id(x) if x._node is None else (id(x._node), x._out_index)
            table = leaf_grads if x._node is None else out_grads
            table[key] = g if key not in table else table[key] + g
    return order, out_grads, leaf_grads


# ---------------------------------------------------------------------- DOT
def _quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _describe(name: str, value, grad, root_name: str) -> str:
    """Edge label: value and gradient for scalars, shapes for arrays."""
    value = np.asarray(value)
    if value.size == 1:
        text = f"{name} = {value.reshape(()).item():.6g}"
        if grad is not None:
            text += f"\nd{root_name}/d{name} = {np.asarray(grad).reshape(()).item():.6g}"
        return text
    text = f"{name} {tuple(value.shape)}"
    if grad is not None:
        g = np.asarray(grad)
        text += (
            f"\n|d{root_name}/d{name}| = {float(np.sqrt((g.astype(np.float64) ** 2).sum())):.3g}"
        )
    return text


def to_dot(
    root: Tensor,
    names: dict[int, str] | None = None,
    root_name: str = "J",
    title: str | None = None,
) -> str:
    """The graph that produced ``root`` as Graphviz DOT, values and gradients on the edges.

    ``names`` maps id(tensor) to a display name (variables, parameters, intermediates) and
    id(node) to an op label; unnamed leaves are ``input0, input1, ...``.
    """
    names = dict(names or {})
    order, out_grads, leaf_grads = gradients(root)
    host = root.backend_object.to_numpy
    lines = [
        "digraph gpunn {",
        "  rankdir=LR;",
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    if title:
        lines.append(f"  labelloc=t; label={_quote(title)};")
    node_ids = {id(n): f"op{i}" for i, n in enumerate(order)}
    leaf_ids: dict[int, str] = {}
    unnamed = 0
    for i, node in enumerate(order):
        label = names.get(id(node)) or _SYMBOLS.get(node.op, node.op)
        lines.append(f"  op{i} [shape=box, style=rounded, label={_quote(label)}];")
    for node in order:
        for x in node.inputs:
            if x is None:
                continue
            if x._node is None:
                if id(x) not in leaf_ids:
                    if id(x) not in names:
                        names[id(x)] = f"input{unnamed}"
                        unnamed += 1
                    leaf_ids[id(x)] = f"leaf{len(leaf_ids)}"
                    style = "ellipse" if x.requires_grad else "plaintext"
                    lines.append(
                        f"  {leaf_ids[id(x)]} [shape={style}, label={_quote(names[id(x)])}];"
                    )
                src = leaf_ids[id(x)]
                grad = leaf_grads.get(id(x))
            else:
                src = node_ids[id(x._node)]
                grad = out_grads.get((id(x._node), x._out_index))
                if id(x) not in names:
                    names[id(x)] = f"{x._node.op}{src[2:]}"
            label = _describe(
                names[id(x)], host(x.data), None if grad is None else host(grad), root_name
            )
            lines.append(f"  {src} -> {node_ids[id(node)]} [label={_quote(label)}];")
    lines.append(f"  result [shape=doublecircle, label={_quote(root_name)}];")
    label = _describe(
        root_name, root.numpy(), host(out_grads[(id(root._node), root._out_index)]), root_name
    )
    lines.append(f"  {node_ids[id(root._node)]} -> result [label={_quote(label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- models
def model_loss(model_name: str, data_name: str | None = None, batch: int = 2):
    """(loss, names, title) of ``model_name`` on ``batch`` samples of ``data_name``; for a
    model without a loss (the perceptron) its output instead of the loss."""
    from gpunn import data as gdata
    from gpunn.train import SPECS, TrainError, build_model, check_compatible, defaults_for

    spec = SPECS[model_name]
    if data_name is None:
        data_name = "breast_cancer" if spec.two_classes else "digits"
    try:
        check_compatible(model_name, data_name)
    except TrainError as e:
        raise GraphError(str(e)) from None
    try:
        split = gdata.load(data_name)
    except (ImportError, OSError, ValueError) as e:
        raise GraphError(str(e)) from None
    settings = {"model": model_name, **defaults_for(model_name, data_name)}
    x_train = spec.layout(split.x_train, split.kind)
    y_train = spec.targets(split.y_train, split.task)
    gpunn.manual_seed(0)
    model = build_model(settings, split, x_train)
    x = gpunn.tensor(x_train[:batch])
    y = gpunn.tensor(y_train[:batch])
    names = {id(p): name for name, p in model.named_parameters()}
    names[id(x)] = "x"
    names[id(y)] = "y"
    objective = spec.objective_for(split.task)
    out = spec.output_fn(model)(x)
    loss = out if objective.loss is None else objective.loss(out, y)
    title = f"{model_name} on {data_name}: {objective.title}"
    return loss, names, f"{title}, batch of {batch}"


# ---------------------------------------------------------------------- the command
def render(dot_path: str, fmt: str) -> str | None:
    """Render ``dot_path`` with Graphviz into ``fmt`` (svg or png); the output path, or None
    when the ``dot`` program is missing. Raises GraphError when dot fails."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    target = os.path.splitext(dot_path)[0] + "." + fmt
    proc = subprocess.run(
        [exe, f"-T{fmt}", dot_path, "-o", target], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise GraphError(f"dot failed on {dot_path}: {proc.stderr.strip() or proc.returncode}")
    return target


def run(expr=None, at=None, model=None, data=None, batch=2, out=None, fmt="svg") -> int:
    """Write the graph (see the module docstring); print what was written. Returns 0."""
    if model is not None and expr is not None:
        raise GraphError("give either --expr or --model, not both")
    if data is not None and model is None:
        raise GraphError("--data needs --model")
    out = out or "graph.dot"
    if model is not None:
        root, names, title = model_loss(model, data, batch)
        from gpunn.train import SPECS

        root_name = "y" if SPECS[model].objective_for("classification").loss is None else "loss"
        dot = to_dot(root, names, root_name=root_name, title=title)
        summary = f"{title}: {len(walk(root))} ops"
    else:
        lecture = expr is None
        text = LECTURE_EXPR if lecture else expr
        values = dict(LECTURE_AT) if lecture and at is None else parse_values(at)
        with gpunn.use_backend("numpy"):
            root, variables, labels = expression(text, values, LECTURE_NAMES if lecture else None)
        names = {id(t): name for name, t in variables.items()}
        names.update(labels)
        title = f"J = {text}" + (
            " at " + ", ".join(f"{k}={values.get(k, 1.0):g}" for k in variables)
        )
        dot = to_dot(root, names, root_name="J", title=title)
        _, _, leaf_grads = gradients(root)
        grads = ", ".join(
            f"dJ/d{k} = {float(np.asarray(leaf_grads.get(id(t), 0.0))):g}"
            for k, t in variables.items()
        )
        summary = f"{title}: J = {root.item():g}; {grads}"
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(dot)
    print(summary)
    print(f"wrote {out}")
    if fmt != "none":
        target = render(out, fmt)
        if target is None:
            print(
                f"Graphviz's dot program is not installed, so only the DOT file was written; "
                f"render it with: dot -T{fmt} {out} -o {os.path.splitext(out)[0]}.{fmt}"
            )
        else:
            print(f"wrote {target}")
    return 0

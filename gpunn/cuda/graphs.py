"""Captured steps: a whole training step replayed as one CUDA graph on the cupy backend.

:func:`graphed` warms a step up on a side stream, captures one call of it into a CUDA graph
and returns a :class:`GraphedStep`, which copies new inputs into the captured step's input
buffers and launches the graph: one launch instead of a few hundred, so the host no longer
bounds a small model's step. Written and checked without a GPU (the capture plan, the
refusals, the input checks, the cuBLAS binding's arguments); not yet run on a GPU.

What a capture needs, and how gpunn provides it:

* Every array the graph reads or writes keeps its address from replay to replay.
  Parameters, optimizer state and batch-norm statistics are updated in place by their ops;
  the gradients are the arrays the captured backward allocated (the step must call
  ``zero_grad()`` first: accumulating into gradients of an earlier call is refused), which
  stay the parameters' ``.grad`` after the capture. Memory allocated during the warm-up and
  the capture comes from a memory pool of the GraphedStep's own, which nothing else
  allocates from, so the graph's temporaries are never handed to other arrays.
* No host work inside the step: every path of the cupy backend that waits for the device or
  moves data between host and device (``.item()``, ``.numpy()``, ``synchronize()``, eager
  label checks, index arrays, batch norm's ``momentum=None``, ``error_if_nonfinite``) and
  products outside gpunn's cuBLAS binding raise :class:`~gpunn.errors.CaptureError`
  naming the op while the step is captured (:func:`capture_plan` lists the ops).
* Host values a step takes anew at every call (dropout's seeds, Adam's step counts, the
  learning rate, momentum and beta1 a schedule moves) go through :func:`replayed`: while
  captured, the kernels read them from device words, and before every replay
  :class:`GraphedStep` draws them again, in the order the step drew them, and copies them
  there. So replays draw as eager steps do: the same masks, the same bias corrections,
  the same generator and step counts afterwards.
* Host decisions that follow from device values (the float16 loss scaler's found-inf
  flag) are split in two: the device acts on the flag inside the graph (an update skipped
  by its kernel), and the host's side of it (the step count not taken, the scale factor's
  backoff or growth) goes through :func:`on_host`, which :class:`GraphedStep` runs after
  every replay, once the replay is done and the flags are read.
* Matrix products through gpunn's own cuBLAS binding (:mod:`gpunn.cuda.cublas`): CuPy
  refuses its own cuBLAS calls during capture.

Only the cupy backend captures; importing this module needs neither CuPy nor a GPU.
"""

from __future__ import annotations

import numpy as np

from gpunn.errors import CaptureError

#: Host values one captured step may draw through :func:`replayed`.
MAX_REPLAYED = 1024
#: Pinned staging buffers of a step's replayed words (a replay refills one while the
#: copies of the previous ones may still be queued).
REPLAY_BUFFERS = 4

_capture = None  # the _ReplayedWords of the step graphed() is capturing, else None


class _Replayed:
    """A number drawn inside a captured step (see :func:`replayed`): its value, and in
    ``slot`` the device address of the word a replay refreshes, which the cupy backend's
    kernels read instead of the value."""

    slot: int

    def __new__(cls, value, slot: int):
        obj = super().__new__(cls, value)
        obj.slot = slot
        return obj


class ReplayedInt(_Replayed, int):
    """A replayed host integer (the word holds it as unsigned 64 bits)."""


class ReplayedFloat(_Replayed, float):
    """A replayed host float (the word holds it as a float64). ``word``: that word as a 0-d
    float64 device array, for CuPy's own operations and the elementwise kernels' scalar
    operands (a scale factor multiplied into a loss, say)."""

    word = None


def replayed(draw):
    """``draw()``: a value a step takes from the host anew at every call: an integer in
    [0, 2**64) (``gpunn.random.next_seed`` for dropout, Adam's step count) or a float (an
    optimizer's learning rate, which a schedule changes between steps). Outside a capture,
    its value. While :func:`graphed` captures a step, a :class:`ReplayedInt` or
    :class:`ReplayedFloat` whose ``slot`` is a device word, and ``draw`` is kept: before
    every replay the :class:`GraphedStep` calls the draws of its step again, in the order
    the step made them, and copies their values to those words. So a replay draws what an
    eager step would have drawn, and leaves the host state (the generator, the step
    counts) as an eager step would."""
    value = draw()
    return value if _capture is None else _capture.add(draw, value)


def capturing() -> bool:
    """Whether :func:`graphed` is capturing a step now."""
    return _capture is not None


def on_host(flags, action) -> None:
    """Call ``action(found)``, ``found`` whether any of ``flags`` (0-d arrays on a backend,
    such as the float16 loss scaler's found-inf flag) is true, once their values are on the
    host: outside a capture at once (a host read), and in a captured step after every
    replay: :class:`GraphedStep` waits for the replay, reads the flags and calls the
    actions in the order the step asked. For the host side of a decision the device makes
    inside the step (an update its kernel skipped: the step count it did not take, the
    scale factor's backoff), so a replay leaves the host as an eager step would."""
    flags = list(flags)
    if _capture is None:
        action(any(bool(f) for f in flags))
    else:
        _capture.after.append((flags, action))


def _address(array) -> int:
    """The device address of ``array``'s first element (as the kernels' launchers take it)."""
    from gpunn.kernels.cuda import workspace

    return workspace.ptr(array)


class _ReplayedWords:
    """The draws of a captured step and the device words their values go to; and the host
    actions that follow each replay (:func:`on_host`)."""

    def __init__(self, name: str):
        import cupy

        self.name = name
        self.device = cupy.zeros(MAX_REPLAYED, np.uint64)
        self.draws: list = []
        self.after: list = []  # (flags, action) of on_host, in the step's order
        self._host = [
            cupy.cuda.alloc_pinned_memory(MAX_REPLAYED * 8) for _ in range(REPLAY_BUFFERS)
        ]
        # recorded after each buffer's copy
        self._events = [cupy.cuda.Event(disable_timing=True) for _ in range(REPLAY_BUFFERS)]
        self._turn = 0  # replays refreshed so far

    def add(self, draw, value):
        """The ReplayedInt or ReplayedFloat of ``value``, whose word is the next one."""
        if len(self.draws) == MAX_REPLAYED:
            raise CaptureError(
                f"{self.name}: the step draws more than {MAX_REPLAYED} host values (dropout "
                "seeds, optimizer step counts and learning rates) that every replay must "
                "draw again"
            )
        if isinstance(value, int) and not 0 <= value < 2**64:
            raise CaptureError(f"{self.name}: a replayed host integer must fit in 64 "
                               f"unsigned bits, got {value}")  # fmt: skip
        k = len(self.draws)
        self.draws.append(draw)
        slot = _address(self.device) + 8 * k
        if not isinstance(value, float):
            return ReplayedInt(value, slot)
        out = ReplayedFloat(value, slot)
        out.word = self.device[k : k + 1].view(np.float64).reshape(())
        return out

    def settle(self) -> None:
        """After a replay: read the flags of the step's :func:`on_host` actions, each once
        (the first read waits for the replay), and call the actions in order."""
        values: dict = {}  # id(flag) -> its value (the flags live as long as self.after)
        for flags, action in self.after:
            for f in flags:
                if id(f) not in values:
                    values[id(f)] = bool(f)
            action(any(values[id(f)] for f in flags))

    def refresh(self, stream) -> None:
        """Draw every value again and copy them to the device words, queued on ``stream``
        before the graph's launch (after the previous replay, which read the last ones)."""
        if not self.draws:
            return
        import cupy

        turn = self._turn % REPLAY_BUFFERS
        if self._turn >= REPLAY_BUFFERS:  # this buffer's copy of 4 replays ago is done
            self._events[turn].synchronize()
        self._turn += 1
        host = self._host[turn]
        words = np.frombuffer(host, np.uint64, len(self.draws))
        for k, draw in enumerate(self.draws):
            value = draw()
            words[k] = np.float64(value).view(np.uint64) if isinstance(value, float) else value
        rt = cupy.cuda.runtime
        nbytes = words.nbytes
        rt.memcpyAsync(_address(self.device), host.ptr, nbytes, rt.memcpyHostToDevice, stream.ptr)
        stream.record(self._events[turn])


#: op stem -> why a captured step cannot contain it (None: capturable). The stems are the
#: backend contract's (``Backend.ops()`` without the _forward/_backward/_update suffix).
CAPTURE_PLAN = {
    "add": None,
    "sub": None,
    "mul": None,
    "div": None,
    "pow": None,
    "neg": None,
    "exp": None,
    "log": None,
    "cast": None,
    "sigmoid": None,
    "tanh": None,
    "relu": None,
    "step": None,
    "leaky_relu": None,
    "gelu": None,
    "batch_norm": None,  # momentum=None alone reads the counter on the host: refused then
    "layer_norm": None,
    "embedding": None,  # its backward sorts with gpunn's own kernel
    "matmul": None,  # float32/float64, 2-D or batched, through gpunn's cuBLAS binding
    "linear": None,
    "sum": None,
    "mean": None,
    "reshape": None,
    "transpose": None,
    "stack": None,
    "unstack": None,
    "getitem": None,  # integer or boolean index arrays are checked on the host: refused
    "softmax": None,
    "log_softmax": None,
    "mse_loss": None,
    "binary_cross_entropy": None,
    "binary_cross_entropy_with_logits": None,
    "cross_entropy": None,  # a bad label is reported after the replay (the device flag)
    "conv2d": None,
    "max_pool2d": None,
    "avg_pool2d": None,
    "dropout": None,  # its seed is replayed (drawn again before every replay)
    "rnn_cell": None,
    "lstm_cell": None,
    "rnn": None,
    "lstm": None,
    "gru": None,
    "sgd": None,
    "adam": None,  # its step count is replayed; the corrections are computed on the device
    "clip_grad_norm": None,  # error_if_nonfinite=True reads the norm on the host: refused
    "clip_grad_value": None,
}


def capture_plan(ops=None) -> dict:
    """{op stem: None when a captured step on the cupy backend may contain it, else why
    not}, for ``ops`` (stems, or a module: the ops of its layers that are known to matter,
    see :func:`module_ops`), or for every op of the contract."""
    if ops is None:
        return dict(CAPTURE_PLAN)
    if not isinstance(ops, (list, tuple, set, frozenset)):
        ops = module_ops(ops)
    unknown = [op for op in ops if op not in CAPTURE_PLAN]
    if unknown:
        raise ValueError(f"capture_plan: unknown op stems {sorted(unknown)}")
    return {op: CAPTURE_PLAN[op] for op in ops}


def blockers(ops) -> dict:
    """{op: why} for the ops of ``ops`` (as :func:`capture_plan` takes them) that a
    captured step cannot contain; empty when all can be captured."""
    return {op: why for op, why in capture_plan(ops).items() if why is not None}


#: layer class name -> the op stems it runs (the layers whose ops are not all capturable
#: or that call more than one op; other layers run one op each, always capturable).
_LAYER_OPS = {
    "Dropout": ("dropout",),
    "Embedding": ("embedding",),
    "Linear": ("linear",),
    "Conv2d": ("conv2d",),
    "BatchNorm1d": ("batch_norm",),
    "BatchNorm2d": ("batch_norm",),
    "LayerNorm": ("layer_norm",),
    "RNN": ("rnn",),
    "LSTM": ("lstm",),
    "GRU": ("gru",),
    "MaxPool2d": ("max_pool2d",),
    "AvgPool2d": ("avg_pool2d",),
}


def module_ops(module) -> list:
    """The op stems of ``module``'s layers that :data:`_LAYER_OPS` knows (a layer's own
    ``forward`` may call more; the capture itself refuses any op it cannot take)."""
    ops = []
    for m in module.modules() if hasattr(module, "modules") else [module]:
        if type(m).__name__ == "Dropout" and getattr(m, "p", None) == 0:
            continue  # dropout with p == 0 runs no op
        for op in _LAYER_OPS.get(type(m).__name__, ()):
            if op not in ops:
                ops.append(op)
    return ops


def step_blockers(model=None, **settings) -> list[str]:
    """Why a training step of ``model`` cannot be captured, as sentences (empty: it can):
    the model's layers (:func:`blockers`). ``settings`` (``amp=...``, ...) name the rest of
    the step; none of gpunn's blocks a capture today: every optimizer (SGD, Adam, AdamW)
    and schedule (the hyper-parameters schedules move are replayed), bfloat16 autocast, and
    float16 autocast with its loss scaler (the updates skip on the device; the scaler's
    host side runs after each replay, see :func:`on_host`)."""
    if model is None:
        return []
    return [f"{op}: {why}" for op, why in blockers(module_ops(model)).items()]


class GraphedStep:
    """A captured step: ``graphed_step(*inputs)`` copies ``inputs`` into the captured
    step's input buffers and replays the graph on the current stream; it returns the
    captured step's outputs, which every replay overwrites (copy or read them before the
    next call). Before the launch it draws the step's replayed values again (dropout's
    seeds, Adam's step counts, the scheduled hyper-parameters: see :func:`replayed`); a
    step that asked for host actions (:func:`on_host`: the float16 loss scaler's) is waited
    for after the launch, and its actions run before the call returns.
    Inputs must have the example inputs' shapes, dtypes and backend. After a replay, the
    ``.grad`` of every parameter of the modules passed as ``state`` is the gradient the
    graph wrote.

    A bad label that cross-entropy's kernel flags during a replay is raised, as in eager
    mode, at the next synchronisation (``loss.item()``, ``.numpy()``); each call also
    raises one already flagged by an earlier replay that has finished (a host read of
    mapped memory, no wait). Hyper-parameters of the optimizers passed as ``state`` to
    :func:`graphed` are checked before each replay: the graph holds the values of the
    capture, so a changed ``weight_decay`` raises :class:`~gpunn.errors.CaptureError`;
    the learning rate, momentum and beta1 are read anew at every replay, so a schedule may
    change them (not to or from 0).
    """

    def __init__(
        self, name, static_inputs, outputs, graph, keep=(), optimizers=(), grads=(), draws=None
    ):
        self.name = name
        self.static_inputs = list(static_inputs)
        self.outputs = outputs
        self.graph = graph
        self._keep = list(keep)  # the pool, the side stream: alive as long as the graph
        self._optimizers = [(opt, _hyper(opt)) for opt in optimizers]
        self._grads = list(grads)  # (parameter, the gradient the graph writes)
        self._draws = draws  # the step's replayed host values (_ReplayedWords), or None
        self.replays = 0

    def check_inputs(self, inputs) -> None:
        """Raise CaptureError unless ``inputs`` match the captured ones in number, backend,
        shape and dtype."""
        if len(inputs) != len(self.static_inputs):
            raise CaptureError(
                f"{self.name}: the captured step takes {len(self.static_inputs)} inputs, got "
                f"{len(inputs)}"
            )
        for i, (x, s) in enumerate(zip(inputs, self.static_inputs)):
            backend = getattr(x, "backend", type(x).__name__)
            if backend != s.backend or x.shape != s.shape or x.dtype != s.dtype:
                raise CaptureError(
                    f"{self.name}: input {i} is {tuple(getattr(x, 'shape', ()))} "
                    f"{getattr(x, 'dtype', '?')} on {backend!r}; the step was captured with "
                    f"{s.shape} {s.dtype} on {s.backend!r} (capture again for new shapes, or "
                    "run the step eagerly)"
                )

    def check_hyper(self) -> None:
        """Raise CaptureError when an optimizer's hyper-parameters that the graph holds
        changed since the capture (see :func:`_hyper`)."""
        for opt, captured in self._optimizers:
            now = _hyper(opt)
            if now != captured:
                changed = [
                    f"{name} of group {g}: {a[name]!r} -> {b[name]!r}"
                    for g, (a, b) in enumerate(zip(captured, now))
                    for name in a
                    if a[name] != b.get(name)
                ]
                raise CaptureError(
                    f"{self.name}: {type(opt).__name__}'s hyper-parameters changed since the "
                    f"capture ({'; '.join(changed) or 'parameter groups'}); the graph holds "
                    "the captured values: capture again, or run the step eagerly"
                )

    def __call__(self, *inputs):
        import cupy

        self.check_inputs(inputs)
        self.check_hyper()
        be = self.static_inputs[0].backend_object if self.static_inputs else None
        if be is not None:
            be._dev.workspace.raise_pending()
        for x, s in zip(inputs, self.static_inputs):
            if x.data is not s.data:
                cupy.copyto(s.data, x.data)
        stream = cupy.cuda.get_current_stream()
        if self._draws is not None:
            self._draws.refresh(stream)
        self.graph.launch(stream)
        if self._draws is not None:
            self._draws.settle()
        for p, g in self._grads:  # an eager step in between may have replaced them
            p.grad = g
        self.replays += 1
        return self.outputs


#: Hyper-parameters every replay reads anew (see :func:`replayed`): a schedule may change
#: them between replays, but not whether they are 0 (which picks the update's path).
SCHEDULED_HYPER = ("lr", "momentum", "beta1")


def _hyper(opt) -> list:
    """The hyper-parameters of every group of ``opt`` that a captured update holds: all
    but those of SCHEDULED_HYPER, of which only whether each is nonzero."""
    out = []
    for g in opt.param_groups:
        held = {k: v for k, v in g.items() if k != "params" and k not in SCHEDULED_HYPER}
        held.update({f"{k} != 0": g[k] != 0 for k in SCHEDULED_HYPER if k in g})
        out.append(held)
    return out


def graphed(step, *example_inputs, warmup: int = 3, state=()):
    """Capture ``step(*example_inputs)`` into a CUDA graph; return a :class:`GraphedStep`.

    ``step``: a function of tensors on the cupy backend (e.g. zero_grad, forward, loss,
    backward, optimizer step; return the loss); ``example_inputs``: tensors of the shapes
    and dtypes every later call will have. The step runs ``warmup`` times on a side stream
    (compiling kernels, creating optimizer state, growing the memory pool), then once under
    capture; ``state``: modules, optimizers and loss scalers whose state those calls
    change: their parameters, buffers, optimizer state and scale factor are saved first and
    written back (in place) after the capture, and the captured gradients zeroed, so the
    first replay is the first step; the optimizers' hyper-parameters are then checked
    before every replay. Without it, the warm-up calls are real steps, as in PyTorch.

    Raises :class:`~gpunn.errors.CaptureError` naming the op when the step does host work
    or runs an op a graph cannot hold (see :func:`capture_plan`), and when the inputs are
    not cupy tensors. Written for CuPy 13/14 and checked without a GPU; not yet run on a
    GPU.
    """
    from gpunn.tensor import Tensor

    name = getattr(step, "__qualname__", None) or repr(step)
    if not example_inputs:
        raise CaptureError(f"graphed({name}): give the step's example inputs")
    for i, x in enumerate(example_inputs):
        if not isinstance(x, Tensor) or x.backend != "cupy":
            where = repr(x.backend) if isinstance(x, Tensor) else type(x).__name__
            raise CaptureError(
                f"graphed({name}): input {i} is {where}; a CUDA graph captures work of the "
                "cupy backend only: pass tensors on 'cupy'"
            )
    if warmup < 1:
        raise CaptureError(f"graphed({name}): warmup must be >= 1 (kernels compile and "
                           f"optimizer state is created in it), got {warmup}")  # fmt: skip
    import cupy

    global _capture
    be = example_inputs[0].backend_object
    current = cupy.cuda.get_current_stream()
    side = cupy.cuda.Stream(non_blocking=True)
    pool = cupy.cuda.MemoryPool()
    static = [Tensor._wrap(be.copy(x.data), be, False) for x in example_inputs]
    saved = _Snapshot(state)
    side.wait_event(current.record())
    try:
        with cupy.cuda.using_allocator(pool.malloc), side:
            for _ in range(warmup):
                step(*static)
            draws = _ReplayedWords(name)
            be.capturing, _capture = name, draws
            side.begin_capture()
            try:
                outputs = step(*static)
            except BaseException:
                try:
                    side.end_capture()
                except Exception:  # the capture was invalidated: nothing to keep
                    pass
                raise
            finally:
                be.capturing, _capture = None, None
            graph = side.end_capture()
    finally:
        current.wait_event(side.record())
        saved.restore()  # also when the capture failed: the warm-up changed the state
    optimizers = [s for s in state if hasattr(s, "param_groups")]
    grads = [(p, p.grad) for m in saved.modules for p in m.parameters() if p.grad is not None]
    keep = (pool, side, saved)
    return GraphedStep(name, static, outputs, graph, keep, optimizers, grads, draws)


class _Snapshot:
    """Device copies of the state of modules and optimizers, written back in place; the
    state_dict of loss scalers; and the state of gpunn's generator (which dropout draws its
    seeds from)."""

    def __init__(self, objects):
        from gpunn import random

        self.tensors = []  # (tensor, copy of its data)
        self.modules, self.optimizers = [], []
        self.host = []  # (object, its state_dict()) of objects with host state alone
        self.rng = random.get_rng_state() if objects else None
        for obj in objects:
            if hasattr(obj, "named_parameters"):
                self.modules.append(obj)
                for _, t in (*obj.named_parameters(), *obj.named_buffers()):
                    self._save(t)
            elif hasattr(obj, "param_groups"):
                self.optimizers.append((obj, [dict(st) for st in obj.state]))
                for st in obj.state:
                    for value in st.values():
                        if hasattr(value, "data") and hasattr(value, "backend"):
                            self._save(value)
            elif hasattr(obj, "load_state_dict"):  # host state only (a GradScaler)
                self.host.append((obj, obj.state_dict()))
            else:
                raise CaptureError(
                    f"graphed: state holds a {type(obj).__name__}; give modules, optimizers "
                    "and loss scalers"
                )

    def _save(self, t) -> None:
        self.tensors.append((t, t.backend_object.copy(t.data)))

    def restore(self) -> None:
        from gpunn import random

        if self.rng is not None:
            random.set_rng_state(self.rng)
        for obj, state in self.host:
            obj.load_state_dict(state)
        for t, copy in self.tensors:
            t.data[...] = copy
        for m in self.modules:  # the captured gradients' buffers, not computed yet
            for _, p in m.named_parameters():
                if p.grad is not None:
                    p.grad.data.fill(0)
        for opt, states in self.optimizers:
            for i, before in enumerate(states):
                now = opt.state[i]
                for key, value in list(now.items()):
                    if key in before and not hasattr(value, "backend"):
                        now[key] = before[key]  # a host value (a step count)
                    elif key not in before:
                        if hasattr(value, "backend"):
                            value.data.fill(0)  # created by the warm-up: fresh is zeros
                        else:
                            del now[key]

"""Device memory the CUDA launchers keep between calls, one set per backend instance.

* the error slots: three int64 words of pinned, host-mapped memory (flag, bad label, number
  of classes) that the cross-entropy kernel writes and the host reads in place;
* the grid-sum scratch: per (stream, dtype) the per-block partial sums and the finishing
  counter of ``gpunn::grid_sum``;
* the fused optimizer updates' pointer tables, cached by content;
* a ones vector per dtype (bias gradients as one GEMV).

Needs CuPy and a device.
"""

from __future__ import annotations

import ctypes

import numpy as np

from gpunn.errors import DeviceMemoryError

#: Pointer tables kept before the cache starts over (a steady training loop needs a few).
MAX_TABLES = 256


def ptr(a) -> int:
    """Device address of array ``a``'s first element."""
    return a.data.ptr


class Workspace:
    """The buffers above, created on first use except the error slots."""

    def __init__(self, max_blocks: int):
        import cupy

        self.max_blocks = max_blocks
        # Pinned memory is mapped into the device's address space at the same address
        # (unified addressing), so kernels write it directly and the host reads it in place.
        self._err_mem = cupy.cuda.PinnedMemory(3 * 8, cupy.cuda.runtime.hostAllocMapped)
        self.err_host = np.ctypeslib.as_array((ctypes.c_int64 * 3).from_address(self._err_mem.ptr))
        self.err_host[:] = 0
        #: The error slots' address, as the kernels take it.
        self.err_dev = np.uint64(self._err_mem.ptr)
        self._scratch: dict = {}
        self._tables: dict = {}
        self._ones: dict = {}
        #: True while a step is captured into a CUDA graph (set through launch.Device).
        self.capturing = False
        self._graph_tables: list = []  # (table, pinned source) of tables made in a capture

    def raise_pending(self) -> None:
        """Raise (and clear) a bad label the cross-entropy kernel has flagged (code 1), or a
        bad index the embedding kernel has (code 2)."""
        err = self.err_host
        if err[0] == 2:
            index, rows = int(err[1]), int(err[2])
            err[:] = 0
            raise IndexError(
                f"embedding: input holds indices outside [0, {rows}): found {index} "
                "(detected on the GPU by the embedding kernel of an earlier call; its rows "
                "are NaN)"
            )
        if err[0]:
            label, classes = int(err[1]), int(err[2])
            err[:] = 0
            raise IndexError(
                f"cross_entropy: target holds class indices outside [0, {classes}): found "
                f"{label} (detected on the GPU by the cross-entropy kernel of an earlier "
                "call; that loss is NaN)"
            )

    def grid_sum_scratch(self, dtype):
        """(partials of max_blocks values, zeroed uint32 counter) for the current stream."""
        import cupy

        key = (cupy.cuda.get_current_stream().ptr, dtype)
        s = self._scratch.get(key)
        if s is None:
            s = (cupy.empty(self.max_blocks, dtype), cupy.zeros(1, np.uint32))
            self._scratch[key] = s
        return s

    def pointer_table(self, columns, sizes):
        """A device array of uint64: each column's data pointers (0 for None), then sizes.
        Cached by content, so a steady training loop uploads nothing."""
        import cupy

        key = (
            tuple(tuple(0 if a is None else ptr(a) for a in col) for col in columns),
            tuple(sizes),
        )
        table = self._tables.get(key)
        if table is None:
            words = np.array([w for col in key[0] for w in col] + list(sizes), dtype=np.uint64)
            table = self._captured_table(words) if self.capturing else cupy.asarray(words)
            if len(self._tables) >= MAX_TABLES:
                self._tables.clear()
            self._tables[key] = table
        return table

    def _captured_table(self, words):
        """A table made while a stream captures (CuPy refuses its own host-to-device copies
        then): the words go to pinned memory, and an asynchronous copy, which becomes a
        node of the graph, brings them to the device. Both buffers are kept for as long as
        this workspace lives, since every replay of the graph copies again."""
        import cupy

        host = cupy.cuda.alloc_pinned_memory(words.nbytes)
        np.frombuffer(host, np.uint64, words.size)[:] = words
        table = cupy.empty(words.size, np.uint64)
        rt = cupy.cuda.runtime
        stream = cupy.cuda.get_current_stream().ptr
        rt.memcpyAsync(ptr(table), host.ptr, words.nbytes, rt.memcpyHostToDevice, stream)
        self._graph_tables.append((table, host))
        return table

    def ones(self, size: int, dtype):
        """A ones vector of ``size`` elements (a view of a cached one)."""
        import cupy

        ones = self._ones.get(dtype)
        if ones is None or ones.size < size:
            ones = cupy.ones(max(size, 1024), dtype)
            self._ones[dtype] = ones
        return ones[:size]


def memory_error(op: str, e) -> DeviceMemoryError:
    """A DeviceMemoryError for CuPy's out-of-memory error ``e`` inside ``op``: the bytes asked
    for, free on the device, and held by CuPy's pool."""
    import cupy

    asked = getattr(e, "_size", None)
    try:
        free, total = cupy.cuda.runtime.memGetInfo()
    except Exception:  # pragma: no cover - the device is in trouble
        free = total = None
    pool = cupy.get_default_memory_pool()
    asked_s = f"{asked:,} bytes" if asked is not None else "an unknown number of bytes"
    free_s = f"{free:,} bytes free of {total:,}" if free is not None else "free memory unknown"
    return DeviceMemoryError(
        f"{op}: out of GPU memory: asked for {asked_s}; {free_s} on the device; CuPy's pool "
        f"holds {pool.used_bytes():,} bytes in use and {pool.free_bytes():,} cached "
        f"(free cached blocks with cupy.get_default_memory_pool().free_all_blocks())"
    )

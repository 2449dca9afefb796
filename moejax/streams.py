"""Data larger than memory: NumPy arrays (e.g. `np.memmap` files) read in blocks of rows.

`streamed(a)` wraps a host array so that `recover`, `recover_experts`, `fit_gating`,
`refine`, `joint_em` and `log_likelihood` never copy it whole to a device. Every pass over the
data (`sums.row_sum`) asks for one block of `chunk_size` rows at a time through
`jax.pure_callback`, and accumulates the same sums as the in-memory chunked layout, in the
same order, so results agree to float rounding.

A wrapped array is a pytree with no leaves: it travels through `jax.jit` as static structure,
compared by what it reads (`Streamed.source`: the file region, or the memory, with shape and
type), so its values are never traced or transferred, and a new wrapper of the same rows
reuses the compiled program. Rows of an `np.memmap`
are read with `os.preadv` into a fresh buffer: the file's pages stay in the kernel's cache and
never count towards the process's resident memory, and the read releases the GIL, which lets
one background thread fetch block i + 1 while the device works on block i.
"""

import concurrent.futures
import mmap
import os
import threading
from typing import NamedTuple
import weakref

import jax
import jax.numpy as jnp
import numpy as np


def compute_dtype(dtype) -> np.dtype | None:
    """The float type moejax computes in for data of `dtype`, or None if it does not hold real
    numbers: integers and booleans in the default float type, float16 / bfloat16 in float32
    (their 3 significant digits cannot hold the moments), other floats as they are."""
    dtype = np.dtype(dtype)
    if dtype == np.dtype(object) or jnp.issubdtype(dtype, jnp.complexfloating) or not (
            jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
            or dtype == jnp.bool_):
        return None
    if not jnp.issubdtype(dtype, jnp.floating):
        return np.dtype(jnp.result_type(float))
    if jnp.finfo(dtype).bits < 32:
        return np.dtype(np.float32)
    return dtype


def _target_dtype(dtype) -> np.dtype:
    """The type a streamed array's blocks are delivered in (`compute_dtype`, canonicalised)."""
    target = compute_dtype(dtype)
    if target is None:
        raise ValueError(f"a streamed array must hold real numbers (float or integer), got "
                         f"dtype {np.dtype(dtype)}.")
    return np.dtype(jax.dtypes.canonicalize_dtype(target))


def _file_region(a: np.ndarray):
    """(path, byte offset of a[0]) when `a` is rows of an np.memmap laid out contiguously in
    its file, else None (then rows are read by slicing)."""
    path = getattr(a, "filename", None)
    buffer = getattr(a, "_mmap", None)
    if not (isinstance(a, np.memmap) and path and isinstance(buffer, mmap.mmap)
            and a.flags.c_contiguous and hasattr(os, "preadv")):  # no preadv on Windows
        return None
    # np.memmap maps the file from `offset` rounded down to the allocation granularity.
    start = a.offset - a.offset % mmap.ALLOCATIONGRANULARITY
    base = np.frombuffer(buffer, np.uint8).__array_interface__["data"][0]
    return path, start + a.__array_interface__["data"][0] - base


class Stats(NamedTuple):
    """What the input checks need, from one pass over a streamed array (`Streamed.stats`).

    Attributes:
      nonfinite: number of NaN or infinite entries.
      max_abs: largest |value| (0 for an empty array).
      min, max: smallest and largest value.
    """

    nonfinite: int
    max_abs: float
    min: float
    max: float


class Streamed:
    """A host array whose rows moejax reads in blocks on every pass (see `streamed`).

    Attributes:
      array: the wrapped NumPy array (or np.memmap), never modified.
      shape, ndim: those of `array`.
      dtype: the float type the blocks are delivered in.
      read_ahead: whether the next block is read in the background.
      rows_read: rows delivered to passes so far (rows_read / n counts the passes).
      error: None, or what went wrong in a pass: a block that could not be read (the file
        truncated, deleted or unreadable) or that held NaN or infinite values (the file
        changed after its check). The pass goes on with NaN rows and the entry point raises
        a ValueError with this message (`take_error`).
    """

    def __init__(self, array: np.ndarray, dtype=None, read_ahead: bool = True):
        self.array = array
        self.read_ahead = read_ahead
        self.rows_read = 0
        self.shape = tuple(array.shape)
        self.ndim = array.ndim
        self.dtype = _target_dtype(array.dtype if dtype is None else dtype)
        self._region = _file_region(array)
        self._lock = threading.Lock()
        self.error = None
        self._ahead = None  # (start, size, future) of the block read in the background
        self._stats = None

    def __repr__(self):
        return f"Streamed(shape={self.shape}, dtype={self.dtype.name})"

    @property
    def source(self) -> tuple:
        """What the blocks are read from, hashable: the file's path and the rows' byte offset
        for a contiguous np.memmap, else the array's memory address and strides; with the
        shape and both types. Two wrappers with the same source deliver the same blocks."""
        where = (("file",) + self._region if self._region is not None else
                 ("memory", self.array.__array_interface__["data"][0], self.array.strides))
        return where + (self.shape, self.array.dtype.str, self.dtype.str)

    def astype(self, dtype) -> "Streamed":
        """The same host array delivered in another float type."""
        if np.dtype(dtype) == self.dtype:
            return self
        other = Streamed(self.array, dtype, self.read_ahead)
        if np.dtype(dtype).itemsize >= self.dtype.itemsize:  # widening keeps every value
            other._stats = self._stats
        return other

    def _name(self) -> str:
        path = getattr(self.array, "filename", None)
        return repr(os.fspath(path)) if path else "the streamed array"

    def _read_now(self, start: int, size: int) -> np.ndarray:
        if self._region is None:
            buffer = getattr(self.array, "_mmap", None)
            if isinstance(buffer, mmap.mmap):
                # A mapped page past the end of a truncated file raises SIGBUS, which kills
                # the process: compare the file's size with the mapping first.
                begin = self.array.offset - self.array.offset % mmap.ALLOCATIONGRANULARITY
                if buffer.size() < begin + len(buffer):
                    raise OSError(f"the file is shorter ({buffer.size()} bytes) than when it "
                                  f"was mapped ({begin + len(buffer)} bytes): truncated")
            return np.array(self.array[start:start + size], dtype=self.dtype)
        path, offset = self._region
        row_bytes = self.array.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        block = np.empty((size,) + self.shape[1:], self.array.dtype)
        view, done = memoryview(block.reshape(-1).view(np.uint8)), 0
        fd = os.open(path, os.O_RDONLY)
        try:
            while done < len(view):  # preadv may return fewer bytes than asked
                got = os.preadv(fd, [view[done:]], offset + start * row_bytes + done)
                if got <= 0:
                    raise OSError("the file ended early (truncated after the check?)")
                done += got
        finally:
            os.close(fd)
        return block.astype(self.dtype, copy=False)

    def _read_in_background(self, start: int, size: int) -> concurrent.futures.Future:
        """`_read_now` in a thread of its own that ends with the read: no thread outlives a
        pass (a pool per wrapper would keep one for every wrapper ever made)."""
        future = concurrent.futures.Future()

        def work():
            try:
                future.set_result(self._read_now(start, size))
            except BaseException as e:  # handed to the pass that waits for the block
                future.set_exception(e)

        threading.Thread(target=work, daemon=True).start()
        return future

    def read(self, start: int, size: int) -> np.ndarray:
        """Rows start .. start + size as a (size, ...) array of `dtype`; starts reading the
        next block (start + size, or row 0 after the last one) in the background."""
        start, size = int(start), int(size)
        with self._lock:
            ahead, self._ahead = self._ahead, None
        n = self.shape[0]
        rows = f"rows {start}..{min(start + size, n) - 1} of {self._name()}"
        try:
            if ahead is not None and ahead[:2] == (start, size):
                block = ahead[2].result()
            else:
                block = self._read_now(start, size)
            if not np.all(np.isfinite(block)):
                self._fail(f"{rows} hold NaN or infinite values: the data changed after "
                           "their check")
        except (OSError, ValueError) as e:
            # Raising here would surface as JAX's callback error and a traceback from its
            # thread: the pass goes on with NaN rows, and the entry point names this.
            self._fail(f"could not read {rows}: {e}")
            block = np.full((size,) + self.shape[1:], np.nan, self.dtype)
        with self._lock:
            # The clamped last block adds only its new rows, so that one pass adds n.
            self.rows_read += min(size, n - start) if start + size < n else n % size or size
            if self.read_ahead:
                following = 0 if start + size >= n else min(start + size, n - size)
                self._ahead = (following, size,
                               self._read_in_background(following, size))
        return block

    def _fail(self, message: str) -> None:
        with self._lock:
            if self.error is None:  # the first cause is the one to report
                self.error = message

    def take_error(self) -> str | None:
        """The error of the last passes (see `error`), cleared for the next call."""
        with self._lock:
            error, self.error = self.error, None
        return error

    def stats(self) -> Stats:
        """NaN/infinity count, max |value|, min and max, from one pass in blocks of about
        64 MB (computed once)."""
        if self._stats is None:
            nonfinite, top, low, high = 0, 0.0, np.inf, -np.inf
            n = self.shape[0]
            row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
            chunk_size = max(1, 2**26 // max(row_bytes, 1))
            for start in range(0, n, chunk_size):
                block = self._read_now(start, min(chunk_size, n - start))
                finite = np.isfinite(block)
                nonfinite += int(block.size - np.count_nonzero(finite))
                if nonfinite:
                    continue
                if block.size:
                    top = max(top, float(np.max(np.abs(block))))
                    low, high = min(low, float(block.min())), max(high, float(block.max()))
            self._stats = Stats(nonfinite, top, low, high)
        return self._stats


# No leaves: jit sees a streamed array as static structure, its `source`, so that a new
# wrapper of the same rows reuses a compiled program. The programs' host callbacks read from
# the wrapper last passed in for that source (`_ACTIVE`), whose `error` and `rows_read` the
# caller then reads; a dead wrapper's entry goes away with it.
_ACTIVE: "weakref.WeakValueDictionary[tuple, Streamed]" = weakref.WeakValueDictionary()


def _flatten(s: Streamed):
    _ACTIVE[s.source] = s
    return (), s.source


jax.tree_util.register_pytree_node(Streamed, _flatten, lambda source, _: _ACTIVE[source])


def streamed(array, *, read_ahead: bool = True) -> Streamed:
    """Marks a NumPy array (or `np.memmap`, e.g. `np.load(path, mmap_mode="r")`) as data that
    stays on the host: `recover`, `recover_experts`, `fit_gating`, `refine`, `joint_em` and
    `log_likelihood` then read it in blocks of `chunk_size` rows on every pass, so peak memory
    is set by the block, not by n (other functions refuse it).

    x: (n, d) and y: (n,) are wrapped separately; `chunk_size` is required. Rows of a
    contiguous np.memmap are read from its file directly; other arrays are sliced. The input
    checks (finite values, scales, constant y) cost one extra pass.

    Args:
      array: a NumPy array of real numbers.
      read_ahead: read block i + 1 in a background thread while block i is summed.

    Returns:
      A `Streamed` array.

    Raises:
      ValueError: for a JAX array (it is on a device already), or a non-numeric dtype.

    >>> import numpy as np
    >>> x = streamed(np.zeros((1000, 3), np.float32))
    >>> x.shape, x.dtype.name
    ((1000, 3), 'float32')
    """
    if isinstance(array, Streamed):
        array = array.array
    if isinstance(array, jax.Array):
        raise ValueError("streamed() takes a NumPy array (or np.memmap) that stays on the "
                         "host; this one is a JAX array on a device already: pass it directly.")
    try:
        array = np.asanyarray(array)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"streamed() takes a rectangular array of real numbers: {e}") from None
    if array.ndim not in (1, 2):
        raise ValueError(f"a streamed array must be 1-D (y) or 2-D (x), got shape {array.shape}.")
    return Streamed(array, read_ahead=bool(read_ahead))


def read_blocks(arrays: tuple, start: jax.Array, size: int) -> list:
    """Inside a traced pass: rows start .. start + size of each streamed array in `arrays`
    (one host callback for all of them); other entries are None."""
    hosts = [a for a in arrays if isinstance(a, Streamed)]
    shapes = [jax.ShapeDtypeStruct((size,) + a.shape[1:], a.dtype) for a in hosts]
    # The sources, not the wrappers: a compiled program outlives the wrapper it was traced
    # with and reads through the one passed in now (`_ACTIVE`).
    sources = [a.source for a in hosts]
    for a in hosts:  # traced here, not passed in (an eager pass): the one to read from
        _ACTIVE[a.source] = a
    # A pure callback: the same start always gives the same rows. (An io_callback may not run
    # inside a while_loop whose predicate is batched, as under vmap over keys.)
    fetched = iter(jax.pure_callback(
        lambda s: [_ACTIVE[source].read(s, size) for source in sources], shapes, start))
    return [next(fetched) if isinstance(a, Streamed) else None for a in arrays]

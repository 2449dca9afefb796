"""Sums over samples: the one place that reads all n rows.

Every statistic the method needs (moments, Gram matrix, EM sums) is a sum over rows of a
function of a block of rows. `row_sum` computes such sums in one of three layouts, chosen by a
static `Layout`:

- in one block (the default);
- in fixed-size chunks, a `lax.scan` over row blocks read with `dynamic_slice`, so the
  temporaries are (chunk_size, ...) whatever n is. The last block is clamped to end at row n,
  and its rows already counted get weight 0, so no padding copy of the data is made;
- data-parallel over a device mesh: each device sums its own rows (in chunks, if asked) inside
  `shard_map`, and `psum` adds the partial sums across devices.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from moejax.streams import Streamed, read_blocks

try:  # jax >= 0.7
    _shard_map = jax.shard_map
except AttributeError:  # pragma: no cover - older jax
    from jax.experimental.shard_map import shard_map as _old_shard_map

    def _shard_map(f, *, mesh, in_specs, out_specs):
        return _old_shard_map(f, mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


class Layout(NamedTuple):
    """How sums over rows are computed (static: hashable, part of the compiled program).

    Attributes:
      chunk_size: rows per block, or None for one block.
      mesh: a `jax.sharding.Mesh` whose axis `axis` splits the rows across devices, or None.
      axis: the mesh axis name of the row dimension.
    """

    chunk_size: int | None = None
    mesh: Mesh | None = None
    axis: str | None = None


def _chunked(fn, arrays, chunk_size, weights=None):
    n = arrays[0].shape[0]
    streaming = any(isinstance(a, Streamed) for a in arrays)
    if chunk_size is None or chunk_size >= n:
        if streaming:
            arrays = [r if r is not None else a
                      for a, r in zip(arrays, read_blocks(arrays, jnp.int32(0), n))]
        return fn(*arrays, jnp.ones((n,), arrays[0].dtype) if weights is None else weights)
    num_blocks = -(-n // chunk_size)

    def block(i):
        start = jnp.minimum(i * chunk_size, n - chunk_size)
        fetched = read_blocks(arrays, start, chunk_size) if streaming else [None] * len(arrays)
        rows = [r if r is not None else jax.lax.dynamic_slice_in_dim(a, start, chunk_size)
                for a, r in zip(arrays, fetched)]
        weight = (start + jnp.arange(chunk_size) >= i * chunk_size).astype(arrays[0].dtype)
        if weights is not None:
            weight = weight * jax.lax.dynamic_slice_in_dim(weights, start, chunk_size)
        return fn(*rows, weight)

    def body(total, i):
        return jax.tree_util.tree_map(jnp.add, total, block(i)), None

    if streaming:
        # Every block inside the scan: a host read at the constant start 0 would be hoisted
        # out of the solvers' loops, and a pass would no longer read every row.
        zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                      jax.eval_shape(block, 0))
        return jax.lax.scan(body, zero, jnp.arange(num_blocks))[0]
    # Starting from block 0 keeps the carry's type that of a block's sums (inside shard_map,
    # zeros would not vary over the mesh axis as the sums do).
    return jax.lax.scan(body, block(0), jnp.arange(1, num_blocks))[0]


def row_sum(fn: Callable[..., Any], arrays: tuple, layout: Layout = Layout(),
            weights: jax.Array | None = None) -> Any:
    """sum over rows r of fn(arrays[r], weight[r]), as fn sees it on blocks of rows: the one
    pass over the data that every estimator's sums go through (in memory, in chunks, sharded
    over devices or streamed from the host; docs/scale.md).

    Args:
      fn: fn(*blocks, weight) -> pytree. `blocks` are the arrays' rows of one block (same
        leading size c), `weight` (c,) is each row's weight (`weights`, or 1) for rows to
        count and 0 for rows to ignore; fn returns sums over the block's rows with every
        row's term multiplied by its weight. fn may close over small replicated arrays.
      arrays: tuple of arrays with the same leading dimension n.
      layout: how to traverse the rows (`layout_of`).
      weights: None or (n,), e.g. 0 on rows that only pad the data to a fixed shape
        (`pad_rows`).

    Returns:
      The pytree fn returns, summed over all blocks (and devices).

    Raises:
      Nothing itself: the layout was checked by `layout_of`.

    >>> x = jnp.arange(12.0).reshape(6, 2)
    >>> row_sum(lambda xb, w: w @ xb, (x,), Layout(chunk_size=4))  # rows padded to 8
    Array([30., 36.], dtype=float32)
    """
    if layout.mesh is None:
        return _chunked(fn, arrays, layout.chunk_size, weights)
    rows = PartitionSpec(layout.axis)
    if weights is not None:
        arrays = (*arrays, weights)

    def local(*blocks):
        if weights is not None:
            blocks, w = blocks[:-1], blocks[-1]
        partial = _chunked(fn, blocks, layout.chunk_size, None if weights is None else w)
        return jax.tree_util.tree_map(lambda v: jax.lax.psum(v, layout.axis), partial)

    return _shard_map(local, mesh=layout.mesh, in_specs=tuple(rows for _ in arrays),
                      out_specs=PartitionSpec())(*arrays)


def row_count(n: int, weights: jax.Array | None) -> jax.Array | int:
    """The number of rows the sums count.

    Args:
      n: the rows of the arrays; weights: None or (n,) row weights.

    Returns:
      n, or the sum of the weights.

    Raises:
      Nothing.

    >>> row_count(5, None), float(row_count(5, jnp.array([1.0, 1.0, 1.0, 0.0, 0.0])))
    (5, 3.0)
    """
    return n if weights is None else jnp.sum(weights)


def bucket_size(n: int) -> int:
    """The padded row count for n rows: the smallest of 8, 12, 16, 24, ..., 2^e, 1.5 2^e, ...
    that is at least n (two buckets per doubling: at most 50% padding, about 20% on average
    over row counts). Tables whose row counts fall in one bucket share every compiled
    program of a fit; fewer, wider buckets trade a little work per pass for far fewer
    compilations (docs/scale.md).

    Args:
      n: a row count.

    Returns:
      The bucket, an int >= max(n, 8).

    Raises:
      Nothing.

    >>> [bucket_size(n) for n in (5, 100, 1000, 1503)]
    [8, 128, 1024, 1536]
    """
    size = 8
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def pad_rows(n_to: int, *arrays) -> tuple[np.ndarray, ...]:
    """On the host: the NumPy arrays with zero rows appended up to n_to rows, and the row
    weights, so that one compiled program serves every row count up to n_to.

    Args:
      n_to: the padded row count, at least the arrays' n (e.g. `bucket_size(n)`).
      *arrays: arrays with the same leading dimension n.

    Returns:
      (*padded, weights): each array with n_to rows, and (n_to,) weights, 1 on the
      original rows and 0 on the padding.

    Raises:
      ValueError: (NumPy's) for n_to < n.

    >>> x, w = pad_rows(4, np.ones((3, 2)))
    >>> x.shape, w.tolist()
    ((4, 2), [1.0, 1.0, 1.0, 0.0])
    """
    n = arrays[0].shape[0]
    padded = tuple(np.pad(np.asarray(a), [(0, n_to - n)] + [(0, 0)] * (np.ndim(a) - 1))
                   for a in arrays)
    weights = (np.arange(n_to) < n).astype(padded[0].dtype)
    return (*padded, weights)


def layout_of(x, chunk_size: int | None = None) -> Layout:
    """The layout for data x: chunked if `chunk_size`, and data-parallel when x is a concrete
    array sharded along its rows over a mesh axis (`NamedSharding` with spec (axis, ...)).

    Args:
      x: (n, d) data: an array, a sharded `jax.Array`, or a `moejax.streamed` host array.
      chunk_size: None, or rows per block (required for streamed data).

    Returns:
      Layout(chunk_size, mesh, axis) for `row_sum`.

    Raises:
      ValueError: for a chunk_size that is not a positive integer, or rows that do not split
        evenly over the devices.

    >>> layout_of(jnp.zeros((10, 2)), chunk_size=4)
    Layout(chunk_size=4, mesh=None, axis=None)
    """
    if chunk_size is not None and (isinstance(chunk_size, (bool, np.bool_)) or not isinstance(
            chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    chunk_size = None if chunk_size is None else int(chunk_size)  # NumPy integers too
    if isinstance(x, Streamed):
        if chunk_size is None:
            raise ValueError("x is a streamed host array: give chunk_size, the rows read per "
                             "block (e.g. 65536; memory grows with chunk_size * d).")
        return Layout(chunk_size)
    sharding = getattr(x, "sharding", None) if not isinstance(x, jax.core.Tracer) else None
    if not isinstance(sharding, jax.sharding.NamedSharding) or not sharding.spec:
        return Layout(chunk_size)
    axis = sharding.spec[0]
    if axis is None:
        return Layout(chunk_size)
    if not isinstance(axis, str):
        raise ValueError(f"x's rows are sharded over the mesh axes {axis}; moejax supports one "
                         "mesh axis for the rows (e.g. PartitionSpec('data')).")
    devices = sharding.mesh.shape[axis]
    if devices == 1:
        return Layout(chunk_size)
    if x.shape[0] % devices:
        raise ValueError(f"x has n = {x.shape[0]} rows, which do not split evenly over the "
                         f"{devices} devices of mesh axis {axis!r}; drop {x.shape[0] % devices} "
                         "rows or pad the data to a multiple.")
    return Layout(chunk_size, sharding.mesh, axis)

"""Host arrays streamed in blocks (`moejax.streamed`): the same results as the in-memory chunked
layout, rows read from the right place of the file, and clear refusals."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moejax as mj
from moejax.sums import Layout, row_sum
from conftest import NOISE_STD, enable_x64, truth_and_data

N, CHUNK = 20_003, 4096  # the last block is partial


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    """(truth, x, y) in memory and the same x, y as np.memmap files (np.load, mmap_mode='r')."""
    truth, x, y = truth_and_data(3, N)
    folder = tmp_path_factory.mktemp("streams")
    np.save(folder / "x.npy", np.asarray(x))
    np.save(folder / "y.npy", np.asarray(y))
    xm = np.load(folder / "x.npy", mmap_mode="r")
    ym = np.load(folder / "y.npy", mmap_mode="r")
    assert isinstance(xm, np.memmap) and xm.offset > 0  # the .npy header precedes the rows
    return truth, x, y, xm, ym


def _assert_same_tree(got, ref, atol):
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(g, r, atol=atol, rtol=0)


@pytest.mark.parametrize("noise_std", [NOISE_STD, None])
def test_streamed_recover_equals_in_memory_chunks(on_disk, noise_std):
    _, x, y, xm, ym = on_disk
    kw = dict(num_experts=3, noise_std=noise_std, chunk_size=CHUNK)
    ref = mj.recover(jax.random.key(0), x, y, **kw)
    got = mj.recover(jax.random.key(0), mj.streamed(xm), mj.streamed(ym), **kw)
    _assert_same_tree(got, ref, atol=1e-5)
    assert bool(got[1].converged)


@pytest.mark.slow  # about 30 s; the streamed recover tests keep the streamed pass in the default suite
def test_streamed_solvers_equal_in_memory_chunks(on_disk):
    truth, x, y, xm, ym = on_disk
    xs, ys = mj.streamed(xm), mj.streamed(ym)
    fit = functools.partial(mj.fit_gating, noise_std=NOISE_STD, chunk_size=CHUNK, num_inits=2)
    _assert_same_tree(fit(jax.random.key(1), xs, ys, truth.experts),
                      fit(jax.random.key(1), x, y, truth.experts), atol=1e-5)
    start = truth._replace(experts=truth.experts + 0.05)
    _assert_same_tree(mj.refine(start, xs, y, chunk_size=CHUNK),  # y may stay in memory
                      mj.refine(start, x, y, chunk_size=CHUNK), atol=1e-5)
    em = functools.partial(mj.joint_em, num_experts=3, num_iters=20, chunk_size=CHUNK)
    _assert_same_tree(em(jax.random.key(2), xs, ys), em(jax.random.key(2), x, y), atol=1e-5)


def test_log_likelihood_in_blocks_and_streamed(on_disk):
    truth, x, y, xm, ym = on_disk
    ref = float(mj.log_likelihood(truth, x, y))
    for xx, yy, chunk in ((x, y, 1000), (mj.streamed(xm), mj.streamed(ym), CHUNK),
                          (mj.streamed(xm), y, 7)):
        assert float(mj.log_likelihood(truth, xx, yy, chunk_size=chunk)) == pytest.approx(
            ref, abs=1e-5)


def test_streamed_recover_under_jit_and_vmap(on_disk):
    _, x, y, xm, ym = on_disk
    run = jax.jit(functools.partial(mj.recover, num_experts=3, noise_std=NOISE_STD,
                                    chunk_size=CHUNK))
    keys = jax.random.split(jax.random.key(4), 2)
    got, _ = jax.vmap(lambda k: run(k, mj.streamed(xm), mj.streamed(ym)))(keys)
    ref, _ = jax.vmap(lambda k: run(k, x, y))(keys)
    _assert_same_tree(got, ref, atol=1e-5)


def _row_sums(arrays, chunk_size):
    return jax.jit(lambda: row_sum(lambda xb, w: jnp.sum(w[:, None] * xb, axis=0), arrays,
                                   Layout(chunk_size)))()


@pytest.mark.parametrize("make", ["memmap_offset", "memmap_row_view", "fortran_memmap",
                                  "in_memory", "int16"])
def test_blocks_come_from_the_right_rows(tmp_path, make):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((1001, 3)).astype(np.float32)
    if make == "memmap_offset":  # rows start mid-file, at an offset that is not page-aligned
        data.tofile(tmp_path / "raw")
        host = np.memmap(tmp_path / "raw", np.float32, "r", offset=12 * 100, shape=(901, 3))
        expect = data[100:]
    elif make == "memmap_row_view":
        np.save(tmp_path / "a.npy", data)
        host, expect = np.load(tmp_path / "a.npy", mmap_mode="r")[37:950], data[37:950]
    elif make == "fortran_memmap":  # columns contiguous: read by slicing instead
        np.save(tmp_path / "a.npy", np.asfortranarray(data))
        host, expect = np.load(tmp_path / "a.npy", mmap_mode="r"), data
        assert not host.flags.c_contiguous
    elif make == "in_memory":
        host, expect = data, data
    else:
        host = (100 * data).astype(np.int16)
        expect = host.astype(np.float32)
    xs = mj.streamed(host)
    assert xs.dtype == np.float32
    with enable_x64(True):
        want = expect.astype(np.float64).sum(axis=0)
        for chunk in (64, 1000, None):
            got = _row_sums((xs,), chunk)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_reads_ahead_and_wraps_to_the_next_pass():
    data = np.arange(50.0, dtype=np.float32).reshape(10, 5)
    xs = mj.streamed(data)
    blocks = [xs.read(s, 4) for s in (0, 4, 6, 0, 4)]  # blocks of two passes, last clamped
    for s, b in zip((0, 4, 6, 0, 4), blocks):
        np.testing.assert_array_equal(b, data[s:s + 4])
    assert xs._ahead[:2] == (6, 4)  # the block after (4, 4) is the clamped last one
    assert xs.rows_read == 18  # one pass of 10 rows, then 8 rows of the next
    quiet = mj.streamed(data, read_ahead=False)
    np.testing.assert_array_equal(quiet.read(4, 4), data[4:8])
    assert quiet._ahead is None


def test_streamed_input_checks(tmp_path, on_disk):
    _, x, y, xm, ym = on_disk
    xs, ys = mj.streamed(xm), mj.streamed(ym)
    with pytest.raises(ValueError, match="give chunk_size"):
        mj.recover(jax.random.key(0), xs, ys, num_experts=3)
    for call in (lambda: mj.predict(truth_and_data(3, 10)[0], xs),
                 lambda: mj.fit(jax.random.key(0), xs, ys, num_experts=2),
                 lambda: mj.joint_gd(jax.random.key(0), xs, ys, num_experts=2)):
        with pytest.raises(ValueError, match="x is a streamed host array.*np.asarray"):
            call()
    bad = np.array(xm)
    bad[5, 1], bad[N - 1, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match="x contains 2 NaN or infinite"):
        mj.recover(jax.random.key(0), mj.streamed(bad), ys, num_experts=3, chunk_size=CHUNK)
    with pytest.raises(ValueError, match="y is constant"):
        mj.recover(jax.random.key(0), xs, mj.streamed(np.full(N, 2.0, np.float32)),
                   num_experts=3, chunk_size=CHUNK)
    with pytest.raises(ValueError, match="x has values up to"):
        mj.recover(jax.random.key(0), mj.streamed(np.asarray(xm) * 1e12), ys, num_experts=3,
                   chunk_size=CHUNK)
    with pytest.raises(ValueError, match="JAX array"):
        mj.streamed(x)
    with pytest.raises(ValueError, match="1-D .* or 2-D"):
        mj.streamed(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="real numbers"):
        mj.streamed(np.array(["a", "b"]))


def test_a_ragged_list_and_numpy_integer_chunk_sizes():
    with pytest.raises(ValueError, match="streamed\\(\\) takes a rectangular array"):
        mj.streamed([[1.0, 2.0], [3.0]])
    x = np.random.default_rng(0).normal(size=(300, 3))
    y = x[:, 0] + 0.1 * np.random.default_rng(1).normal(size=300)
    a = mj.recover(jax.random.key(0), x, y, num_experts=2, chunk_size=np.int64(100))[0]
    b = mj.recover(jax.random.key(0), x, y, num_experts=2, chunk_size=100)[0]
    np.testing.assert_array_equal(a.experts, b.experts)


def test_a_file_truncated_or_changed_under_a_stream_is_one_clear_error(tmp_path):
    # No JAX callback error and no traceback from its thread: the pass finishes on NaN rows
    # and the entry point names the file and the rows. A strided memmap of a truncated file
    # would raise SIGBUS when read: its size is compared with the mapping first.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 4)).astype(np.float32)
    y = (x[:, 0] + 0.1 * rng.normal(size=4000)).astype(np.float32)
    for name, strided in (("x.npy", False), ("xs.npy", True)):
        np.save(tmp_path / name, x)
        xm = np.load(tmp_path / name, mmap_mode="r")
        xs = mj.streamed(xm[:, ::2] if strided else xm)
        ys = mj.streamed(y)
        xs.stats()  # the check passes on the whole file
        os.truncate(tmp_path / name, 20000)
        with pytest.raises(ValueError, match=f"rows [0-9]+..[0-9]+ of '[^']*{name}'.*"
                                             "(ended early|truncated)"):
            mj.recover(jax.random.key(0), xs, ys, num_experts=2, chunk_size=512)
    path = tmp_path / "nan.npy"
    np.save(path, x)
    xm = np.load(path, mmap_mode="r+")
    xs = mj.streamed(xm)
    xs.stats()
    xm[1000, 2] = np.nan  # written after the check
    xm.flush()
    with pytest.raises(ValueError, match="rows 512..1023 .* NaN or infinite values: the data "
                                         "changed after their check"):
        mj.log_likelihood(mj.random_params(jax.random.key(0), 4, 2), xs, mj.streamed(y),
                          chunk_size=512)

"""Sums over rows in every layout: one block, chunks, and sharded over 8 CPU devices."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moejax as mj
from moejax.sums import Layout, layout_of, row_sum
from conftest import NOISE_STD, enable_x64, truth_and_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stats(xb, yb, w):
    return {"xtx": xb.T @ ((yb * w)[:, None] * xb), "count": jnp.sum(w)}


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 100, 128, 1000])
def test_chunked_sums_match_numpy(chunk_size):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((1000, 4)), rng.standard_normal(1000)
    with enable_x64(True):
        got = jax.jit(lambda x, y: row_sum(_stats, (x, y), Layout(chunk_size)))(x, y)
        np.testing.assert_allclose(got["xtx"], x.T @ (y[:, None] * x), rtol=1e-12)
        assert got["count"] == 1000  # every row counted once, the clamped last block included


@pytest.mark.parametrize("chunk_size", [None, 7, 128])
def test_weighted_sums_match_numpy(chunk_size):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((1000, 4)), rng.standard_normal(1000)
    w = rng.uniform(0, 2, 1000) * (rng.uniform(size=1000) > 0.2)
    with enable_x64(True):
        got = jax.jit(lambda x, y, w: row_sum(_stats, (x, y), Layout(chunk_size), w))(x, y, w)
        np.testing.assert_allclose(got["xtx"], x.T @ ((w * y)[:, None] * x), rtol=1e-12)
        np.testing.assert_allclose(got["count"], w.sum(), rtol=1e-12)


def test_bucket_sizes_pad_by_at_most_a_half():
    sizes = [mj.sums.bucket_size(n) for n in range(1, 5000)]
    for n, b in enumerate(sizes, start=1):
        assert b >= n and b % 4 == 0 and b <= max(1.5 * n, 8), (n, b)
    assert sizes == sorted(sizes) and len(set(sizes)) == 20  # two per doubling from 8 to 6144
    assert np.mean([b / n for n, b in enumerate(sizes, start=1) if n > 64]) < 1.25


def test_zero_weight_padding_is_exact():
    # The moment stage and the gating EM on data padded with weight-0 rows equal the same
    # stages on the data alone, to float rounding.
    truth, x, y = truth_and_data(2, 5000)
    xp, yp, w = mj.sums.pad_rows(mj.sums.bucket_size(5000) + 300, x, y)
    kw = dict(num_experts=3, noise_std=NOISE_STD)
    ref, _ = mj.recover_experts(jax.random.key(0), x, y, **kw)
    got, _ = mj.recover_experts(jax.random.key(0), xp, yp, weights=w, **kw)
    np.testing.assert_allclose(got.experts, ref.experts, atol=1e-5)
    gkw = dict(noise_std=jnp.full(3, 0.3), learn_noise_std=True, num_iters=100)
    w_ref, info_ref = mj.fit_gating(jax.random.key(1), x, y, truth.experts, **gkw)
    w_got, info_got = mj.fit_gating(jax.random.key(1), xp, yp, truth.experts, weights=w, **gkw)
    assert int(info_got.num_iters) == int(info_ref.num_iters)
    np.testing.assert_allclose(w_got, w_ref, atol=1e-4)
    # float32 sums in another order, over 100 iterations: agreement to ~1e-5 (measured 1.6e-5).
    np.testing.assert_allclose(info_got.noise_std, info_ref.noise_std, rtol=1e-4)
    np.testing.assert_allclose(info_got.log_likelihood, info_ref.log_likelihood, rtol=1e-6)
    with pytest.raises(ValueError, match="weights must have one entry per row"):
        mj.fit_gating(jax.random.key(1), x, y, truth.experts, noise_std=0.1, weights=w)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        mj.recover_experts(jax.random.key(0), xp, yp, weights=-w, **kw)


def test_layout_of_rejects_bad_chunk_sizes():
    x = jnp.zeros((10, 3))
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            layout_of(x, bad)
    assert layout_of(x, 4) == Layout(4)


@pytest.mark.slow  # make test-all: the sharded test and the weighted sums cover chunks too
@pytest.mark.parametrize("nonlinearity", ["relu"])
def test_recover_chunked_equals_in_memory(nonlinearity):
    truth, x, y = truth_and_data(0, 30_000, nonlinearity)
    kw = dict(num_experts=3, nonlinearity=nonlinearity, noise_std=NOISE_STD)
    ref, _ = mj.recover(jax.random.key(0), x, y, **kw)
    for chunk in (4096, 7001):
        got, _ = mj.recover(jax.random.key(0), x, y, chunk_size=chunk, **kw)
        rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
        # The moment stage is a fixed sequence of sums: equal to float rounding.
        assert rel(got.experts, ref.experts) < 1e-5
        # The gating EM stops on a tolerance, and a different summation order can stop it one
        # iteration apart (seen with jax 0.11.2: 2.4e-4): gating within 1e-3, far below its
        # statistical error (~0.05 here), and likelihoods within a few stopping tolerances
        # (gating_tol (1 + |L|) = 1.2e-6 per iteration; measured gap 4e-6).
        assert rel(got.gating, ref.gating) < 1e-3
        assert float(mj.log_likelihood(got, x, y)) == pytest.approx(
            float(mj.log_likelihood(ref, x, y)), abs=2e-5)


def test_implicit_whitening_matches_dense():
    # d = 40: the top-3 eigenspace from 4 subspace iterations equals the dense eigh's; the
    # eigengap at n = 3e4 is large (signal 0.3 against sampling noise about 0.05).
    key_p, key_x = jax.random.split(jax.random.key(5))
    truth = mj.random_params(key_p, 40, 3, noise_std=0.1)
    x, y = mj.sample(key_x, truth, 30_000)
    kw = dict(num_experts=3, noise_std=0.1)
    dense, _ = mj.recover_experts(jax.random.key(0), x, y, **kw)
    implicit, _ = mj.recover_experts(jax.random.key(0), x, y, num_subspace_iters=4,
                                     chunk_size=5000, **kw)
    assert float(mj.expert_error(implicit.experts, dense.experts)) < 1e-3
    np.testing.assert_allclose(np.sort(implicit.mixing_weights), np.sort(dense.mixing_weights),
                               rtol=1e-3)


_SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import moejax as mj
    assert jax.device_count() == 8, jax.devices()
    key_p, key_x = jax.random.split(jax.random.key(0))
    truth = mj.random_params(key_p, 10, 3, noise_std=0.1, nonlinearity="tanh")
    x, y = mj.sample(key_x, truth, 40_000)
    kw = dict(num_experts=3, nonlinearity="tanh", noise_std=0.1)
    ref, _ = mj.recover(jax.random.key(1), x, y, **kw)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    ys = jax.device_put(y, NamedSharding(mesh, P("data")))
    assert mj.sums.layout_of(xs).mesh is mesh
    for chunk in (None, 1000):
        got, _ = mj.recover(jax.random.key(1), xs, ys, chunk_size=chunk, **kw)
        for a, b in ((got.experts, ref.experts), (got.gating, ref.gating)):
            rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
            assert rel < 1e-5, (chunk, rel)
            print("relative difference", chunk, rel)
    # The joint EM too: five plain EM steps from recover's estimate, every pass sharded.
    kw_refine = dict(num_iters=5, tol=1e-12, accelerate=False, learn_noise_std=True)
    r_ref, _ = mj.refine(ref, x, y, **kw_refine)
    r_got, _ = mj.refine(ref, xs, ys, chunk_size=1000, **kw_refine)
    for a, b in zip(jax.tree.leaves(r_got), jax.tree.leaves(r_ref)):
        rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
        assert rel < 1e-5, ("refine", rel)
    # Row weights travel with the rows: sharded like them, summed the same.
    w = jnp.linspace(0.0, 2.0, 40_000)
    ws = jax.device_put(w, NamedSharding(mesh, P("data")))
    stats = lambda xb, wb: xb.T @ (wb[:, None] * xb)
    for chunk in (None, 1000):
        got = jax.jit(lambda x, w: mj.sums.row_sum(stats, (x,), mj.sums.layout_of(xs, chunk),
                                                   w))(xs, ws)
        ref_sum = x.T @ (w[:, None] * x)
        assert float(jnp.max(jnp.abs(got - ref_sum)) / jnp.max(jnp.abs(ref_sum))) < 1e-5
    try:
        mj.recover(jax.random.key(1), xs[:39_999], ys[:39_999], **kw)
    except ValueError as e:
        assert "split evenly" in str(e) or "multiple" in str(e), e
    print("SHARDED OK")
""")


def test_sharded_over_8_cpu_devices_equals_single_device():
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and "SHARDED OK" in out.stdout, out.stdout + out.stderr

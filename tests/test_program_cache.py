"""The programs kept on disk (program_cache): entries are data tied to their key, nothing read
back is unpickled, a directory others can write in is refused, a failed write leaves nothing,
and a damaged entry costs one warning and a compilation, in library use as on the command
line."""

import os
import pickle
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moejax as mj
from moejax import compilation, program_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@jax.jit
def _toy(params, scale):
    return params._replace(experts=params.experts * scale), {"total": jnp.sum(params.gating)}


def _toy_args():
    params = mj.MoEParams(jnp.eye(2), jnp.ones((2, 2)), jnp.float32(0.5), "tanh")
    return params, jnp.float32(3.0)


def _exported(tmp_path, key=("a", "b")):
    """An entry of _toy written to tmp_path under `key`, and its path."""
    assert program_cache._can_serialize()  # flatbuffers is a dependency; imports jax.export
    leaves, in_tree = jax.tree_util.tree_flatten(_toy_args())
    path = str(tmp_path / "_toy-entry")
    made = program_cache._export(_toy, leaves, in_tree, {}, path, list(key), "fast_code")
    assert made is not None and os.path.exists(path)
    return path, leaves


def _run(entry, leaves):
    run, outputs = entry
    return program_cache._build(outputs, run(*leaves))


def test_an_entry_is_data_and_read_back_only_under_its_key(tmp_path):
    path, leaves = _exported(tmp_path)
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(b"moejax export 2\n") and b"pickle" not in data
    want = _toy(*_toy_args())
    got = _run(program_cache._read(path, ["a", "b"], "_toy", "fast_code"), leaves)
    assert type(got[0]) is mj.MoEParams and got[0].nonlinearity == "tanh"
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    # Read under another key (an entry swapped with another's): refused and deleted.
    assert program_cache._read(path, ["a", "c"], "_toy", "fast_code") is None
    assert not os.path.exists(path)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "other_class"])
def test_a_damaged_entry_is_deleted(tmp_path, damage):
    path, _ = _exported(tmp_path)
    with open(path, "rb") as f:
        data = f.read()
    if damage == "truncated":  # as by a full disk
        data = data[:len(data) - 10]
    elif damage == "flipped":  # a payload byte changed: the digest no longer matches
        data = data[:-5] + bytes([data[-5] ^ 1]) + data[-4:]
    else:  # a header naming a class outside moejax
        data = data.replace(b'"moejax.params:MoEParams"', b'"subprocess:Popen"')
    with open(path, "wb") as f:
        f.write(data)
    assert program_cache._read(path, ["a", "b"], "_toy", "fast_code") is None
    assert not os.path.exists(path)
    with pytest.raises(ValueError, match="not a moejax class"):
        program_cache._namedtuple("subprocess:Popen")


class _Planted:
    """What a stranger could plant: unpickling it writes a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_planted_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "_toy-entry"
    path.write_bytes(pickle.dumps((_Planted(str(marker)), b"")))
    assert program_cache._read(str(path), ["a", "b"], "_toy", "fast_code") is None
    assert not marker.exists() and not path.exists()


def test_a_directory_others_can_write_in_is_refused(tmp_path, capfd):
    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    assert compilation.directory_problem(str(own)) is None
    for mode in (0o770, 0o777, 0o1777):
        own.chmod(mode)
        assert "other users can write" in compilation.directory_problem(str(own))
    before = jax.config.jax_compilation_cache_dir
    assert mj.enable_compilation_cache(own) is None
    assert jax.config.jax_compilation_cache_dir == before  # nothing changed
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "no compilation cache (other users can write" in err
    (tmp_path / "file").write_text("")
    assert "not a directory" in compilation.directory_problem(str(tmp_path / "file"))
    with pytest.raises(ValueError, match="path must be a directory"):
        mj.enable_compilation_cache(123)


def test_a_write_that_fails_leaves_nothing_behind(tmp_path, monkeypatch):
    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    program_cache._write(str(tmp_path / "exports" / "entry"), b"x" * 1000)
    assert os.listdir(tmp_path / "exports") == []


_EXPORT_SCRIPT = """
import sys, jax, numpy as np, moejax as mj
mj.enable_compilation_cache(sys.argv[1])
jax.config.update("jax_log_compiles", True)
rng = np.random.default_rng(0)
x = rng.normal(size=(300, 3))
y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 2]) + 0.1 * rng.normal(size=300)
m = mj.fit(jax.random.key(0), x, y, num_experts=2, num_refine_iters=int(sys.argv[3]),
           num_refine_inits=3)
np.save(sys.argv[2], np.concatenate([np.ravel(v) for v in (
    m.params.experts, m.params.gating, m.params.noise_std, m.inference.information)]))
"""


def _script(tmp_path, script, name, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cache"),
                          str(tmp_path / name), *map(str, args)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stderr, np.load(tmp_path / f"{name}.npy")


def test_a_later_process_loads_the_exported_programs_instead_of_tracing_them(tmp_path):
    # Fresh processes sharing a cache directory (the cache is process state). The first traces
    # the fit's program and the standard errors' and keeps both exported; the second traces
    # neither (JAX's compile log names every function it traces) and gives bit-identical
    # numbers. The entries of two fits that differ only in a static setting swapped (30 and
    # 3 refinement iterations): each is refused under the other's key, traced and written
    # again, and the fit is the 30-iteration one.
    def run(name, iters):
        stderr, out = _script(tmp_path, _EXPORT_SCRIPT, name, iters)
        return set(re.findall(r"Finished tracing.*? (_fit_program|_statistics) for", stderr)), out

    traced, first = run("first", 30)
    assert traced == {"_fit_program", "_statistics"}
    traced, shorter = run("shorter", 3)
    assert traced == {"_fit_program"} and not np.array_equal(shorter, first)
    entries = sorted((tmp_path / "cache" / program_cache.EXPORTS).iterdir())
    assert [e.name.split("-")[0] for e in entries] == ["_fit_program"] * 2 + ["_statistics"]
    traced, second = run("second", 30)
    assert traced == set()
    np.testing.assert_array_equal(second, first)
    a, b = entries[0].read_bytes(), entries[1].read_bytes()
    entries[0].write_bytes(b)
    entries[1].write_bytes(a)
    traced, swapped = run("swapped", 30)
    assert traced == {"_fit_program"}
    np.testing.assert_array_equal(swapped, first)


_GUARD_SCRIPT = _EXPORT_SCRIPT.replace('jax.config.update("jax_log_compiles", True)\n', "") + \
    "m.predict(x)\n"


@pytest.mark.slow  # five fresh processes, about a minute
def test_the_library_survives_a_damaged_cache_with_one_warning(tmp_path):
    # JAX's own entries of the fit's and the standard errors' programs swapped (a program of
    # other shapes loaded under a key), then one truncated: `fit` in library use gives the
    # same numbers with one warning each time, and the next process is clean.
    _, first = _script(tmp_path, _GUARD_SCRIPT, "first", 30)
    cache = tmp_path / "cache"

    def entry(name):
        return next(p for p in cache.iterdir() if p.name.startswith(f"jit_{name}_exported-"))

    a, b = entry("_fit_program"), entry("_statistics")
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    stderr, out = _script(tmp_path, _GUARD_SCRIPT, "swapped", 30)
    assert stderr.count("emptied the cache and compiled again") == 1, stderr
    np.testing.assert_array_equal(out, first)
    _script(tmp_path, _GUARD_SCRIPT, "refill", 30)
    damaged = entry("_predict")
    damaged.write_bytes(damaged.read_bytes()[:100])
    stderr, out = _script(tmp_path, _GUARD_SCRIPT, "truncated", 30)
    assert re.search(r"unreadable entries .*\(_predict_exported\) were deleted", stderr), stderr
    assert stderr.count("Warning") == 1, stderr
    np.testing.assert_array_equal(out, first)
    stderr, _ = _script(tmp_path, _GUARD_SCRIPT, "clean", 30)
    assert "Warning" not in stderr, stderr

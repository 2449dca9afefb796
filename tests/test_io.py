import json
import os

import jax
import numpy as np
import pytest

import moejax as mj
from conftest import truth_and_data


@pytest.fixture(scope="module")
def fitted():
    _, x, y = truth_and_data(0, 3000, "tanh")
    names = tuple(f"x{i}" for i in range(x.shape[1]))
    return mj.fit(jax.random.key(0), x, y, num_experts=3, nonlinearity="tanh", refine_iters=5,
                  feature_names=names, target_name="y"), x


def test_save_load_round_trip(tmp_path, fitted):
    model, x = fitted
    path = tmp_path / "model.npz"
    mj.io.save(path, model)
    loaded = mj.io.load(path)
    assert (loaded.nonlinearity, loaded.feature_names, loaded.target_name) == (
        "tanh", model.feature_names, "y")
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(model)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temporary left behind


def test_interrupted_save_keeps_the_old_file(tmp_path, fitted, monkeypatch):
    model, _ = fitted
    path = tmp_path / "model.npz"
    mj.io.save(path, model)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        mj.io.save(path, model)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_corrupted_truncated_and_foreign_files_fail_clearly(tmp_path, fitted):
    model, _ = fitted
    path = tmp_path / "model.npz"
    mj.io.save(path, model)
    data = path.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.npz").write_bytes(os.urandom(2000))
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    for name in ("truncated", "garbage", "foreign"):
        with pytest.raises(ValueError, match="not a .*moejax model"):
            mj.io.load(tmp_path / f"{name}.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mj.io.load(tmp_path / "absent.npz")


def test_newer_format_is_refused(tmp_path, fitted):
    model, _ = fitted
    path = tmp_path / "model.npz"
    mj.io.save(path, model)
    with np.load(path) as f:
        arrays = dict(f)
    meta = json.loads(str(arrays["meta"]))
    meta["format_version"] = mj.io.FORMAT_VERSION + 1
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="Upgrade moejax"):
        mj.io.load(path)

import dataclasses
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
    return mj.fit(jax.random.key(0), x, y, num_experts=3, nonlinearity="tanh", num_refine_iters=5,
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


def test_one_sigma_per_expert_or_one_shared_both_round_trip(tmp_path, fitted):
    model, x = fitted
    assert model.noise_std.shape == (3,)  # fit's default
    # (Its training statistics belong to the per-expert fit: save refuses a mismatch.)
    shared = dataclasses.replace(model, params=model.params._replace(
        noise_std=model.params.noise_std[0]), inference=None)
    for m in (model, shared):
        mj.io.save(tmp_path / "m.npz", m)
        loaded = mj.io.load(tmp_path / "m.npz")
        np.testing.assert_array_equal(loaded.noise_std, m.noise_std)
        np.testing.assert_array_equal(loaded.log_likelihood(x, x[:, 0]),
                                      m.log_likelihood(x, x[:, 0]))


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


_SLOW_SAVE = """
import signal, sys, time
# A test runner's worker may start children with SIGINT ignored; a user's Python has Ctrl-C.
signal.signal(signal.SIGINT, signal.default_int_handler)
import numpy as np
import moejax as mj
model = mj.io.load(sys.argv[1])
def slow(f, **arrays):
    f.write(b"partial")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
np.savez = slow
mj.io.save(sys.argv[1], model)
"""


def _start_slow_save(path):
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(path)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    return child


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_terminated_save_leaves_no_temporary(tmp_path, fitted, sig):
    import signal
    model, _ = fitted
    path = tmp_path / "model.npz"
    mj.io.save(path, model)
    before = path.read_bytes()
    child = _start_slow_save(path)
    assert len(list(tmp_path.iterdir())) == 2  # the model and the temporary
    child.send_signal(getattr(signal, sig))
    assert child.wait(timeout=30) != 0
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    assert path.read_bytes() == before


def test_the_next_save_removes_a_killed_saves_temporary(tmp_path, fitted):
    model, _ = fitted
    path = tmp_path / "model.npz"
    mj.io.save(path, model)
    child = _start_slow_save(path)
    child.kill()  # SIGKILL: nothing in the child can clean up
    child.wait(timeout=30)
    assert len(list(tmp_path.iterdir())) == 2
    (tmp_path / "other.npz").write_bytes(b"")  # not ours: left alone
    mj.io.save(path, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "other.npz"]


def test_file_mode_follows_the_umask_and_an_overwrite_keeps_it(tmp_path, fitted):
    model, _ = fitted
    path = tmp_path / "model.npz"
    old = os.umask(0o027)
    try:
        mj.io.save(path, model)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
    path.chmod(0o644)
    mj.io.save(path, model)
    assert path.stat().st_mode & 0o777 == 0o644


def test_save_refuses_what_load_would_refuse(tmp_path, fitted):
    model, _ = fitted
    bad = {
        "non-finite": model.params._replace(noise_std=np.float32(np.nan)),
        "positive": model.params._replace(noise_std=np.float32(-1.0)),
        "shapes": model.params._replace(gating=model.params.gating[:, :-1]),
    }
    for match, params in bad.items():
        with pytest.raises(ValueError, match=match):
            mj.io.save(tmp_path / "m.npz", dataclasses.replace(model, params=params))
    for g in ("no_such_g", jax.numpy.tanh):  # unknown, or a callable: not a saveable name
        with pytest.raises(ValueError, match="non-linearity"):
            mj.io.save(tmp_path / "m.npz", dataclasses.replace(
                model, params=model.params._replace(nonlinearity=g)))
    with pytest.raises(ValueError, match="feature_names"):
        mj.io.save(tmp_path / "m.npz", dataclasses.replace(model, feature_names=("a", "b")))
    with pytest.raises(ValueError, match="FittedMoE"):
        mj.io.save(tmp_path / "m.npz", model.params)
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_names_is_saved_with_default_names(tmp_path, fitted):
    model, _ = fitted
    mj.io.save(tmp_path / "m.npz", dataclasses.replace(model, feature_names=None))
    assert mj.io.load(tmp_path / "m.npz").feature_names == tuple(
        f"x{i + 1}" for i in range(model.dim))


def _rewrite(path, **changes):
    with np.load(path) as f:
        arrays = dict(f)
    meta = json.loads(str(arrays["meta"]))
    for key, value in changes.items():
        if key in arrays and key != "meta":
            arrays[key] = value
        else:
            meta[key] = value
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


@pytest.mark.parametrize("change", [
    dict(feature_names=["a", "b"]), dict(feature_names="abc"), dict(nonlinearity=3),
    dict(format_version="1"), dict(target_name=[1]), dict(noise_std=np.float32(-0.5)),
    dict(y_scale=np.float32(0.0)), dict(experts=np.zeros((3,), np.float32)),
    dict(noise_std=np.ones(2, np.float32)), dict(noise_std=np.float32([0.1, 0.2, -0.1])),
    dict(target_range=[3.0, 1.0]), dict(target_range=[0.0, "x"]), dict(target_range=5.0),
])
def test_load_refuses_inconsistent_contents_with_a_value_error(tmp_path, fitted, change):
    model, _ = fitted
    path = tmp_path / "model.npz"
    mj.io.save(path, model)
    _rewrite(path, **change)
    with pytest.raises(ValueError):
        mj.io.load(path)


def test_load_of_other_files_raises_value_error_without_pickle_advice(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros(3))
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    np.savez(tmp_path / "objects.npz", meta=np.array([{"a": 1}], dtype=object))
    (tmp_path / "dir.npz").mkdir()
    for name in ("plain.npy", "table.csv", "objects.npz", "dir.npz"):
        with pytest.raises(ValueError) as info:
            mj.io.load(tmp_path / name)
        assert "pickle" not in str(info.value)


def test_temporaries_of_other_hosts_are_left_alone(tmp_path, fitted):
    model, _ = fitted
    path = tmp_path / "model.npz"
    import subprocess
    import sys
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()  # its pid is free here, but may be a live save on another machine
    other = tmp_path / f".model.npz.otherhost-{done.pid}.abc.moejax.tmp"
    other.write_bytes(b"")
    mj.io.save(path, model)
    assert other.exists()


def test_a_registered_nonlinearity_saves_and_loads_by_name(tmp_path, fitted, monkeypatch):
    model, x = fitted
    mj.register_nonlinearity("tanh_for_io_test", jax.numpy.tanh)
    custom = dataclasses.replace(model, params=model.params._replace(
        nonlinearity="tanh_for_io_test"))
    mj.io.save(tmp_path / "m.npz", custom)
    loaded = mj.io.load(tmp_path / "m.npz")
    assert loaded.nonlinearity == "tanh_for_io_test"
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-6)
    # In a process that has not registered the name, load says what to do.
    monkeypatch.delitem(mj.nonlinearities._NAMED, "tanh_for_io_test")
    with pytest.raises(ValueError, match="not registered in this process.*register_nonlinearity"):
        mj.io.load(tmp_path / "m.npz")


def test_save_and_load_keep_the_report_and_the_standard_errors(tmp_path, fitted):
    model, _ = fitted
    assert model.report is not None and model.inference is not None
    mj.io.save(tmp_path / "m.npz", model)
    loaded = mj.io.load(tmp_path / "m.npz")
    for part in ("report", "inference"):
        for u, v in zip(getattr(loaded, part), getattr(model, part)):
            np.testing.assert_array_equal(u, v)
    assert loaded.summary() == model.summary()


@pytest.mark.slow  # make test-all (a k selection's fits)
def test_save_and_load_keep_the_report_the_selection_and_the_standard_errors(tmp_path):
    _, x, y = truth_and_data(1, 600)
    model = mj.fit(jax.random.key(0), x[:, :3], y, num_experts="auto", max_experts=2,
                   num_refine_iters=50, num_refine_inits=2)
    assert model.selection is not None and model.inference is not None
    mj.io.save(tmp_path / "m.npz", model)
    loaded = mj.io.load(tmp_path / "m.npz")
    for part in ("report", "selection", "inference"):
        a, b = getattr(loaded, part), getattr(model, part)
        assert (a is None) == (b is None), part
        if b is not None:
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u, v)
    assert loaded.summary() == model.summary()
    assert loaded.noise_learned == model.noise_learned


def test_a_format_1_file_still_loads(tmp_path, fitted):
    # What moejax wrote before format 2: the parameters and preprocessing only.
    model, x = fitted
    arrays = dict(experts=model.params.experts, gating=model.params.gating,
                  noise_std=model.params.noise_std,
                  **{k: v for k, v in model.standardizer._asdict().items() if v is not None})
    meta = dict(format="moejax-model", format_version=1, moejax_version="0.2.0.dev0",
                nonlinearity="tanh", feature_names=list(model.feature_names), target_name="y")
    np.savez(tmp_path / "old.npz", meta=np.array(json.dumps(meta)),
             **{k: np.asarray(v) for k, v in arrays.items()})
    old = mj.io.load(tmp_path / "old.npz")
    assert old.report is None and old.inference is None and old.selection is None
    np.testing.assert_array_equal(old.predict(x), model.predict(x))
    assert "no standard errors" in old.summary()


def test_saves_on_long_names_bytes_paths_links_and_refuses_special_files(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 3))
    model = mj.fit(jax.random.key(0), x, x[:, 0] + x[:, 1], num_experts=1)
    long = tmp_path / ("m" * 240 + ".npz")  # legal (under 255); the temporary is cut to fit
    mj.io.save(long, model)
    assert mj.io.load(str(long)).num_experts == 1
    assert [p.name for p in tmp_path.iterdir()] == [long.name]  # no temporary left behind
    raw = os.fsencode(tmp_path / "bytes.npz")
    mj.io.save(raw, model)
    assert mj.io.load(raw).num_experts == 1
    target = tmp_path / "target.npz"
    target.write_bytes(b"old")
    (tmp_path / "link.npz").symlink_to(target)
    mj.io.save(tmp_path / "link.npz", model)  # written through the link, the link kept
    assert (tmp_path / "link.npz").is_symlink() and mj.io.load(target).num_experts == 1
    with pytest.raises(FileNotFoundError, match="the directory .*nowhere.* does not exist"):
        mj.io.save(tmp_path / "nowhere" / "m.npz", model)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        mj.io.save(tmp_path / "fifo", model)


@pytest.mark.parametrize("version", ["1", True, 1.0, 0, None])
def test_a_damaged_format_version_is_called_damaged_not_new(tmp_path, fitted, version):
    model, _ = fitted
    path = tmp_path / "model.npz"
    mj.io.save(path, model)
    _rewrite(path, format_version=version)
    with pytest.raises(ValueError, match="is corrupted: its format_version") as info:
        mj.io.load(path)
    assert "Upgrade" not in str(info.value)


def test_a_poisson_model_round_trips_with_its_family_and_prior(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    y = rng.poisson(np.exp(np.where(x[:, 0] > 0, 1 + 0.5 * x[:, 1], 0.2))).astype(float)
    model = mj.fit(jax.random.key(0), x, y, num_experts=2, family="poisson",
                   num_refine_iters=20, prior=mj.Prior(expert_scale=1.5))
    mj.io.save(tmp_path / "counts.npz", model)
    loaded = mj.io.load(tmp_path / "counts.npz")
    assert loaded.params.family == "poisson" and loaded.nonlinearity == "exp"
    assert loaded.prior == mj.Prior(expert_scale=1.5) and not loaded.noise_learned
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    np.testing.assert_array_equal(loaded.predict_interval(x[:5])[1],
                                  model.predict_interval(x[:5])[1])
    assert loaded.summary() == model.summary()
    # A format-2 file (before the expert prior): its prior's two fields load, the third
    # takes its default.
    _rewrite(tmp_path / "counts.npz", format_version=2,
             prior=dict(gate_scale=2.5, noise_dof=3.0))
    assert mj.io.load(tmp_path / "counts.npz").prior == mj.Prior()


def test_a_model_with_gate_columns_round_trips_and_damage_to_them_is_named(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    y = np.where(x[:, 2] > 0, x[:, 0], -x[:, 1]) + 0.1 * rng.normal(size=400)
    model = mj.fit(jax.random.key(0), x, y, num_experts=2, expert_columns=[0, 1],
                   gate_columns=[2], num_refine_iters=20, feature_names=["a", "b", "v"])
    mj.io.save(tmp_path / "gated.npz", model)
    loaded = mj.io.load(tmp_path / "gated.npz")
    assert loaded.columns == model.columns and loaded.dim == 3
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.summary() == model.summary()
    _rewrite(tmp_path / "gated.npz", columns=dict(experts=[0, 1], gate=[5]))
    with pytest.raises(ValueError, match="is corrupted: columns must be null or"):
        mj.io.load(tmp_path / "gated.npz")
    _rewrite(tmp_path / "gated.npz", columns=None)
    with pytest.raises(ValueError, match="is corrupted: .*gate standardisation without"):
        mj.io.load(tmp_path / "gated.npz")

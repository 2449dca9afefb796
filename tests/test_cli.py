"""The command line, run as a user would (subprocess), on small CSVs written here."""

import csv
import dataclasses
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import moejax as mj
from conftest import truth_and_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The compilation cache these tests share (as a user's runs do), so that a table shape another
# test compiled is not compiled again; tests of the cache itself pass their own (or "").
_SHARED_CACHE = []


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    _SHARED_CACHE.append(str(tmp_path_factory.mktemp("cli_cache")))
    yield
    _SHARED_CACHE.pop()


def moejax(*args, cwd, cache=None):
    cache = _SHARED_CACHE[-1] if cache is None else cache
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", MOEJAX_CACHE_DIR=cache)
    return subprocess.run([sys.executable, "-m", "moejax", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


HEADER = [f"f{i}" for i in range(10)] + ["target"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    truth, x, y = truth_and_data(0, 4000)
    table = np.c_[np.asarray(x) * 2 + 1, np.asarray(y) * 10 + 3]
    # The oracle's error: E[y | x] leaves the random choice of expert unexplained.
    oracle_mse = 100 * float(np.mean(np.square(np.asarray(mj.predict(truth, x)) - np.asarray(y))))
    write_csv(d / "train.csv", HEADER, table.tolist())
    out = moejax("fit", "--data=train.csv", "--target=target", "--experts=3", "--out=model.npz",
                 "--num_refine_iters=20", cwd=d)
    assert out.returncode == 0, out.stderr
    return d, table, out.stdout, oracle_mse


def test_fit_prints_summary_and_writes_model(workdir):
    d, _, stdout, oracle_mse = workdir
    for text in ("mixing weights:", "training NLL:", "training MSE:", "gating EM", "wrote model.npz",
                 "starts kept after screening"):
        assert text in stdout
    mse = float(stdout.split("training MSE:")[1].split()[0])
    assert mse < 1.1 * oracle_mse
    assert (d / "model.npz").is_file()


def test_plot_writes_the_overview_png(workdir):
    pytest.importorskip("matplotlib")
    d, table, _, _ = workdir
    write_csv(d / "few.csv", HEADER, table[:400].tolist())
    out = moejax("plot", "--model=model.npz", "--data=few.csv", "--out=fit.png",
                 "--feature=f3", cwd=d)
    assert out.returncode == 0, out.stderr
    assert (d / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote fit.png (400 rows, 3 experts)" in out.stdout
    write_csv(d / "no_target.csv", HEADER[:-1], table[:50, :-1].tolist())
    out = moejax("plot", "--model=model.npz", "--data=no_target.csv", "--out=x.png", cwd=d)
    assert out.returncode == 1 and "it lacks ['target']" in out.stderr
    assert not (d / "x.png").exists()


def test_streams_and_odd_paths_are_read_or_refused_clearly(workdir):
    # A FIFO as --data is read like standard input; a FIFO as --model, a device as --out and
    # both names of one flag are refused with one line; the interval columns keep the level.
    d, table, _, _ = workdir
    fifo = d / "rows.fifo"
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(fifo)
    rows = "\n".join(",".join(map(repr, r)) for r in table[:40].tolist())

    def feed():
        with open(fifo, "w") as f:
            f.write(",".join(HEADER) + "\n" + rows + "\n")

    writer = threading.Thread(target=feed)
    writer.start()
    out = moejax("predict", "--model=model.npz", f"--data={fifo.name}", "--out=p.csv",
                 "--interval=0.999999999", cwd=d)
    writer.join(timeout=60)
    assert out.returncode == 0, out.stderr
    header = (d / "p.csv").read_text().splitlines()[0].split(",")
    assert header[2:4] == ["lower_0.999999999", "upper_0.999999999"]
    assert len((d / "p.csv").read_text().splitlines()) == 41
    out = moejax("summary", f"--model={fifo.name}", cwd=d)
    assert out.returncode == 1 and "is not a regular file" in out.stderr
    if os.path.exists("/dev/null"):
        out = moejax("predict", "--model=model.npz", "--data=train.csv", "--out=/dev/null",
                     cwd=d)
        assert out.returncode == 1 and "or --out=- for standard output" in out.stderr
    out = moejax("fit", "--data=train.csv", "--target=target", "--experts=2", "--out=m.npz",
                 "--refine_iters=5", "--num_refine_iters=10", cwd=d)
    assert out.returncode == 1 and "pass only --num_refine_iters" in out.stderr


def test_predict_writes_predictions_in_column_order_of_model(workdir):
    d, table, _, oracle_mse = workdir
    # Columns shuffled and the target dropped: matched by name.
    order = [3, 1, 0, 2, 4, 5, 6, 7, 9, 8]
    write_csv(d / "new.csv", [HEADER[i] for i in order], table[:50, order].tolist())
    out = moejax("predict", "--model=model.npz", "--data=new.csv", "--out=pred.csv", cwd=d)
    assert out.returncode == 0, out.stderr
    with open(d / "pred.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["line", "predicted_target"] and len(rows) == 51
    pred = np.array([float(r[1]) for r in rows[1:]])
    assert np.mean((pred - table[:50, -1]) ** 2) < 2 * oracle_mse  # 50 rows: a loose check


@pytest.mark.parametrize("name,content,flags,message", [
    ("absent.csv", None, ["--target=target", "--experts=3"], "does not exist"),
    ("t.csv", "a,b,c\n1,2,3\n", ["--target=y", "--experts=2"], "column 'y' is not in"),
    ("t.csv", "a,b,c,y\n" + "1,2,x,4\n" * 10, ["--target=y", "--experts=2"], "non-numeric cell"),
    ("t.csv", "a,b,c,y\n" + "1,2,3,4\n" * 10 + "1,,3,4\n1,2,nan,4\n", ["--target=y", "--experts=2"],
     "2 row(s) with missing or infinite cells, at lines 12, 13"),
    ("t.csv", "a,b,c,y\n" + "1,2,3,4\n" * 3, ["--target=y", "--experts=2"],
     "x has n = 3 samples; the moment method needs at least"),
    ("t.csv", "a,b,c,y\n" + "1,2,3,4\n" * 30, ["--target=y", "--experts=4"],
     "the target column 'y' is constant (every entry is 4)"),
    ("t.csv", "a,b,c,y\n" + "1,2,3,4\n" * 30, ["--target=y", "--experts=\u00b2"],
     "--experts must be"),
    ("t.csv", "a,y\n" + "".join(f"{i},{i % 3}\n" for i in range(20)),
     ["--target=y", "--experts=5"], "num_experts=5 has 23 free parameters on d = 1 features, "
     "more than the 20 rows"),
    ("t.csv", "", ["--target=y", "--experts=2"], "is empty"),
    ("t.csv", "a,b,y\n1,2\n", ["--target=y", "--experts=2"], "line 2 has 2 fields"),
    ("t.csv", "a;b;c;y\n" + "1;2;3;4\n" * 10, ["--target=y", "--experts=2"],
     "pass --delimiter=';'"),
    ("t.csv", "a,b,c,y\n" + "".join(f"{i},5,{i * i},{i % 3}\n" for i in range(20)),
     ["--target=y", "--experts=2"], "'t.csv' has constant column(s), which carry no "
     "information and cannot be standardised: column 'b'"),
    ("t.csv", "a,b,c,y\n" + "".join(f"{i},{i * i},{i},{i % 3}\n" for i in range(20)),
     ["--target=y", "--experts=2"], "), among them: column 'a'; column 'c'. Drop redundant"),
    ("t.csv", "a,b,c,y\n" + "".join(f"{i},{i * i},{i % 5},7\n" for i in range(20)),
     ["--target=y", "--experts=2"], "target column 'y' is constant"),
    ("t.csv", "a,b,c,y\n" + "".join(f"{i},{i * i},{1e39 if i == 7 else i % 5},{i % 3}\n"
                                    for i in range(20)),
     ["--target=y", "--experts=2"], "'t.csv' has values beyond the range of float32, JAX's default float type (largest "
     "3.4e+38): line 9, column 'c' = 1e+39. Rescale"),
    ("t.csv", "a,b,c,y\n" + "".join(f"{i},{i * i},{(i * 7) % 5},{i % 3}\n" for i in range(8)),
     ["--target=y", "--experts=2"], "more than the 8 rows"),
])
def test_fit_bad_inputs_fail_cleanly_and_write_nothing(tmp_path, name, content, flags, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    before = set(os.listdir(tmp_path))
    out = moejax("fit", f"--data={name}", "--out=m.npz", *flags, cwd=tmp_path)
    assert out.returncode == 1
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert set(os.listdir(tmp_path)) == before


def test_drop_missing_drops_and_reports(workdir, tmp_path):
    _, table, _, _ = workdir
    rows = table[:400].tolist()
    rows[5][2] = ""
    rows[7][0] = "nan"
    write_csv(tmp_path / "t.csv", HEADER, rows)
    cache = tmp_path / "cache"
    out = moejax("fit", "--data=t.csv", "--target=target", "--experts=3", "--out=m.npz",
                 "--num_refine_iters=2", "--drop_missing", cwd=tmp_path, cache=str(cache))
    assert out.returncode == 0, out.stderr
    # For the next run: the fit's and the standard errors' programs exported, and compiled.
    exports = {p.name.split("-")[0] for p in (cache / mj.program_cache.EXPORTS).iterdir()}
    assert {"_fit_program", "_statistics", "_predict"} <= exports, exports
    compiled = {p.name.split("-")[0] for p in cache.iterdir()}
    assert {f"jit_{name}_exported" for name in exports} <= compiled, compiled
    assert "dropped 2 row(s)" in out.stdout and "lines 7, 9" in out.stdout
    assert "libtpu" not in out.stderr  # no INFO noise from JAX's backend search
    assert "398 rows" in out.stdout


def test_predict_bad_inputs(workdir, tmp_path):
    d, table, _, _ = workdir
    write_csv(tmp_path / "few.csv", HEADER[:5], table[:10, :5].tolist())
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    cases = [
        (["--model=absent.npz", "--data=few.csv"], "does not exist"),
        (["--model=broken.npz", "--data=few.csv"], "not a readable moejax model"),
        ([f"--model={d / 'model.npz'}", "--data=few.csv"], "does not match the model"),
        ([f"--model={d / 'model.npz'}"], "missing required flag(s): --data"),
    ]
    for flags, message in cases:
        before = set(os.listdir(tmp_path))
        out = moejax("predict", *flags, "--out=p.csv", cwd=tmp_path)
        assert out.returncode == 1 and message in out.stderr, (flags, out.stderr)
        assert "Traceback" not in out.stderr and set(os.listdir(tmp_path)) == before


def test_unknown_command_is_a_usage_error(tmp_path):
    out = moejax("train", cwd=tmp_path)
    assert out.returncode == 2 and "usage: python -m moejax {fit,predict,summary,plot}" in out.stderr


def _table_csv(path, workdir, rows=60):
    _, table, _, _ = workdir
    write_csv(path, HEADER, table[:rows].tolist())
    return path.read_bytes()


def test_out_may_never_name_the_input_table_or_model(workdir, tmp_path):
    d, _, _, _ = workdir
    data = _table_csv(tmp_path / "t.csv", workdir)
    os.symlink(tmp_path / "t.csv", tmp_path / "link.csv")
    for out_flag in ("--out=t.csv", "--out=link.csv", f"--out={tmp_path / '.' / 't.csv'}"):
        out = moejax("fit", "--data=t.csv", "--target=target", "--experts=3", out_flag,
                     cwd=tmp_path)
        assert out.returncode == 1 and "same file as --data" in out.stderr, out.stderr
        assert "fitting" not in out.stdout
    model = (d / "model.npz").read_bytes()
    for out_flag, what in ((f"--out={d / 'model.npz'}", "--model"), ("--out=t.csv", "--data")):
        out = moejax("predict", f"--model={d / 'model.npz'}", "--data=t.csv", out_flag,
                     cwd=tmp_path)
        assert out.returncode == 1 and f"same file as {what}" in out.stderr, out.stderr
    assert (tmp_path / "t.csv").read_bytes() == data and (d / "model.npz").read_bytes() == model


def test_unusable_out_or_data_paths_fail_before_any_work(workdir, tmp_path):
    _table_csv(tmp_path / "t.csv", workdir)
    (tmp_path / "sub").mkdir()
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x81 not text")
    (tmp_path / "nul.csv").write_bytes(b"a,b,target\n1,\x00,2\n")
    cases = [("--data=t.csv", "--out=sub", "is a directory; give a file name"),
             ("--data=binary.csv", "--out=m.npz", "is not a text table"),
             ("--data=nul.csv", "--out=m.npz", "non-numeric cell"),
             ("--data=t.csv", "--out=nowhere/m.npz", "does not exist"),
             ("--data=sub", "--out=m.npz", "data file 'sub' is a directory")]
    for data_flag, out_flag, message in cases:
        out = moejax("fit", data_flag, out_flag, "--target=target", "--experts=3", cwd=tmp_path)
        assert out.returncode == 1 and message in out.stderr, out.stderr
        assert "fitting" not in out.stdout


def test_a_model_saved_from_python_without_names_works_in_the_cli(workdir, tmp_path):
    d, table, _, _ = workdir
    x = table[:20, :-1]
    # The fixture's model with its names taken away, as a Python fit without names makes it.
    model = dataclasses.replace(mj.io.load(d / "model.npz"), feature_names=None, target_name=None)
    mj.io.save(tmp_path / "m.npz", model)
    write_csv(tmp_path / "new.csv", [f"x{i + 1}" for i in range(10)], x.tolist())
    out = moejax("predict", "--model=m.npz", "--data=new.csv", "--out=p.csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 21


def test_help_lists_each_commands_flags_and_exits_0(tmp_path):
    out = moejax("fit", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for flag in ("--data", "--target", "--experts", "--out", "--delimiter", "--nonlinearity",
                 "--max_experts", "--select_by", "--num_refine_inits", "--chunk_size"):
        assert flag in out.stdout, out.stdout
    assert "leaky_relu" in out.stdout
    out = moejax("predict", "--help", cwd=tmp_path)
    assert out.returncode == 0 and "--interval:" in out.stdout and "--target:" not in out.stdout
    out = moejax("--help", cwd=tmp_path)
    assert out.returncode == 0 and "fit, predict, summary" in out.stdout
    out = moejax("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"moejax {mj.__version__}"


def test_one_expert_from_standard_input_and_predictions_to_standard_output(workdir, tmp_path):
    _, table, _, _ = workdir
    rows = "\n".join(",".join(repr(float(v)) for v in r) for r in table[:300])
    text = ",".join(HEADER) + "\n" + rows + "\n"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", MOEJAX_CACHE_DIR="")
    out = subprocess.run([sys.executable, "-m", "moejax", "fit", "--data=-", "--target=target",
                          "--experts=1", "--out=ls.npz"], cwd=tmp_path, env=env, input=text,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "least squares" in out.stdout
    out = subprocess.run([sys.executable, "-m", "moejax", "predict", "--model=ls.npz",
                          "--data=-", "--out=-"], cwd=tmp_path, env=env, input=text,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "line,predicted_target" and len(lines) == 301
    assert "wrote 300 predictions to standard output" in out.stderr
    # Least squares in the table's units: the predictions are numpy's lstsq fit.
    design = np.c_[np.ones(300), table[:300, :-1]]
    beta = np.linalg.lstsq(design, table[:300, -1], rcond=None)[0]
    pred = np.array([float(line.split(",")[1]) for line in lines[1:]])
    np.testing.assert_allclose(pred, design @ beta, rtol=1e-3, atol=1e-2)
    assert set(os.listdir(tmp_path)) == {"ls.npz"}


@pytest.mark.slow  # about 23 s; test_selection covers auto in-process
def test_experts_auto_prints_the_scores_and_writes_the_chosen_model(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, 2))
    y = x @ [2.0, -1.0] + 3 + 0.5 * rng.normal(size=800)  # one linear regression: k = 1
    write_csv(tmp_path / "t.csv", ["a", "b", "y"], np.c_[x, y].tolist())
    out = moejax("fit", "--data=t.csv", "--target=y", "--experts=auto", "--out=m.npz",
                 "--num_refine_iters=100", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "chose k = 1" in out.stdout and "| k | parameters |" in out.stdout
    assert mj.io.load(tmp_path / "m.npz").num_experts == 1


def test_summary_and_predict_with_intervals_and_posteriors(workdir):
    d, table, _, _ = workdir
    out = moejax("summary", "--model=model.npz", cwd=d)
    assert out.returncode == 0, out.stderr
    for text in ("Mixture of 3 experts", "rows: 4000", "BIC", "expert 3", "gate 2", "f9",
                 "std err"):
        assert text in out.stdout, text
    out = moejax("predict", "--model=model.npz", "--data=train.csv", "--out=full.csv",
                 "--interval=0.8", "--posteriors", cwd=d)
    assert out.returncode == 0, out.stderr
    assert "0.8 intervals:" in out.stdout
    with open(d / "full.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["line", "predicted_target", "lower_0.8", "upper_0.8", "p_1", "p_2",
                       "p_3", "q_1", "q_2", "q_3", "cluster"]
    values = np.array(rows[1:], dtype=float)
    assert values.shape == (4000, 11)
    assert np.all(values[:, 2] < values[:, 3])  # (a bimodal mean may lie outside)
    np.testing.assert_allclose(values[:, 4:7].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(values[:, 10], values[:, 7:10].argmax(axis=1) + 1)
    inside = np.mean((values[:, 2] <= table[:, -1]) & (table[:, -1] <= values[:, 3]))
    assert 0.75 < inside < 0.85  # the training rows of a well-specified fit
    out = moejax("predict", "--model=model.npz", "--data=train.csv", "--out=x.csv",
                 "--interval=1.5", cwd=d)
    assert out.returncode == 1 and "--interval must be a level in (0, 1)" in out.stderr


def test_enable_compilation_cache_for_library_users(tmp_path):
    # In a fresh process (the cache is process state): a compiled program lands in the
    # directory even though it compiles in far under JAX's default threshold of a second, and
    # an unusable directory is one line on stderr while the program goes on.
    script = ("import sys, jax, moejax as mj\n"
              "print(mj.enable_compilation_cache(sys.argv[1]))\n"
              "print(float(jax.jit(lambda a: a * 3 + 1)(1.0)))\n")
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    good = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cache")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr
    assert good.stdout.split() == [str(tmp_path / "cache"), "4.0"]
    assert len(os.listdir(tmp_path / "cache")) >= 1
    (tmp_path / "file").write_text("")
    bad = subprocess.run([sys.executable, "-c", script, str(tmp_path / "file" / "cache")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 0 and bad.stdout.split() == ["None", "4.0"]
    assert sum("no compilation cache" in line for line in bad.stderr.splitlines()) == 1


def test_fit_chooses_columns_and_predict_reads_only_the_models(workdir, tmp_path):
    # An id column of text and an unused column: --exclude leaves the text out, --features
    # picks columns; predict ignores what the model does not use, including a target column
    # with unknown ('?') values, which it then does not score.
    _, table, _, _ = workdir
    header = ["id"] + HEADER[:3] + ["note", "target"]
    rows = [[f"r{i}"] + [repr(float(v)) for v in r[:3]] + ["text", repr(float(r[-1]))]
            for i, r in enumerate(table[:300])]
    write_csv(tmp_path / "t.csv", header, rows)
    out = moejax("fit", "--data=t.csv", "--target=target", "--experts=1", "--out=m.npz",
                 cwd=tmp_path)
    assert out.returncode == 1 and "--exclude=id,note" in out.stderr, out.stderr
    out = moejax("fit", "--data=t.csv", "--target=target", "--experts=1", "--out=m.npz",
                 "--exclude=id,note,f2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert mj.io.load(str(tmp_path / "m.npz")).feature_names == ("f0", "f1")
    out = moejax("fit", "--data=t.csv", "--target=target", "--experts=1", "--out=m.npz",
                 "--features=f2,f0", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert mj.io.load(str(tmp_path / "m.npz")).feature_names == ("f2", "f0")
    out = moejax("fit", "--data=t.csv", "--target=target", "--experts=1", "--out=m.npz",
                 "--features=f0,zz", cwd=tmp_path)
    assert out.returncode == 1 and "--features: column 'zz' is not in" in out.stderr
    for row in rows[:5]:
        row[-1] = "?"
    write_csv(tmp_path / "new.csv", header, rows)
    out = moejax("predict", "--model=m.npz", "--data=new.csv", "--out=p.csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "not scored" in out.stderr and "MSE" not in out.stdout
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 301


@pytest.mark.slow  # four command-line runs, about 50 s
def test_a_damaged_compilation_cache_is_detected_and_replaced(tmp_path):
    # Entries swapped between keys (a program of other shapes loaded) and a truncated entry:
    # one line on stderr each, the fit succeeds, and the next run is clean.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    # Two regimes, so that the fit keeps both experts and prints no warning.
    y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 2]) + 0.1 * rng.normal(size=200)
    write_csv(tmp_path / "t.csv", ["a", "b", "c", "y"], np.c_[x, y].tolist())
    cache = tmp_path / "cache"
    args = ("fit", "--data=t.csv", "--target=y", "--experts=2", "--out=m.npz",
            "--num_refine_iters=2")
    assert moejax(*args, cwd=tmp_path, cache=str(cache)).returncode == 0
    entries = {p.name.split("-")[0]: p for p in cache.iterdir()}
    # The fit's program and the standard errors', run from their exports
    # (compilation.cached_call).
    a, b = entries["jit__fit_program_exported"], entries["jit__statistics_exported"]
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    out = moejax(*args, cwd=tmp_path, cache=str(cache))
    assert out.returncode == 0, out.stderr
    assert "emptied the cache and compiled again" in out.stderr
    out = moejax(*args, cwd=tmp_path, cache=str(cache))  # fills the emptied cache again
    assert out.returncode == 0 and out.stderr == "", out.stderr
    entries = {p.name.split("-")[0]: p for p in cache.iterdir()}
    entry = entries["jit__predict_exported"]
    entry.write_bytes(entry.read_bytes()[:100])
    out = moejax(*args, cwd=tmp_path, cache=str(cache))
    assert out.returncode == 0, out.stderr
    assert "unreadable entries" in out.stderr and "_predict" in out.stderr
    assert out.stderr.count("\n") == 1 and "UserWarning" not in out.stderr
    out = moejax(*args, cwd=tmp_path, cache=str(cache))
    assert out.returncode == 0 and out.stderr == "", out.stderr


def test_import_registers_a_nonlinearity_for_fit_and_predict(tmp_path):
    # A model with a registered g is usable from the command line through --import; the 0.1
    # flag name --refine_iters still works, with a warning.
    (tmp_path / "my_g.py").write_text(
        "import jax.numpy as jnp\nimport moejax\n"
        "moejax.register_nonlinearity('half_tanh', lambda t: 2 * jnp.tanh(t / 2))\n")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = np.where(x[:, 0] > 0, 2 * np.tanh(x[:, 1]), -np.tanh(x[:, 2])) + 0.1 * rng.normal(size=400)
    write_csv(tmp_path / "t.csv", ["a", "b", "c", "y"], np.c_[x, y].tolist())
    out = moejax("fit", "--data=t.csv", "--target=y", "--experts=2", "--out=m.npz",
                 "--nonlinearity=half_tanh", "--import=my_g", "--refine_iters=10", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "--refine_iters is now called --num_refine_iters" in out.stderr
    assert "10 iterations" in out.stdout  # the old flag's value was used
    out = moejax("predict", "--model=m.npz", "--data=t.csv", "--out=p.csv", cwd=tmp_path)
    assert out.returncode == 1 and "--import=MODULE" in out.stderr, out.stderr
    out = moejax("predict", "--model=m.npz", "--data=t.csv", "--out=p.csv", "--import=my_g",
                 cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "p.csv").is_file()
    out = moejax("fit", "--data=t.csv", "--target=y", "--experts=2", "--out=m2.npz",
                 "--import=no_such_module_here", cwd=tmp_path)
    assert out.returncode == 1 and "--import=no_such_module_here" in out.stderr
    out = moejax("fit", "--data=t.csv", "--target=y", "--experts=2", "--out=m2.npz",
                 "--nonlinearity=half_tanh", cwd=tmp_path)
    assert out.returncode == 1 and "--import module registers" in out.stderr


def test_fit_and_predict_a_count_target_with_the_poisson_family(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = rng.poisson(np.exp(np.where(x[:, 0] > 0, 1 + 0.5 * x[:, 1], 0.2)))
    write_csv(tmp_path / "counts.csv", ["a", "b", "n"], np.c_[x, y].tolist())
    out = moejax("fit", "--data=counts.csv", "--target=n", "--experts=2", "--family=poisson",
                 "--num_refine_iters=30", "--out=m.npz", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "fitting 2 poisson experts" in out.stdout and "noise sd" not in out.stdout
    summary = moejax("summary", "--model=m.npz", cwd=tmp_path)
    assert "Mixture of 2 poisson experts, log link" in summary.stdout
    out = moejax("predict", "--model=m.npz", "--data=counts.csv", "--out=p.csv",
                 "--interval=0.8", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = np.genfromtxt(tmp_path / "p.csv", delimiter=",", names=True)
    assert np.all(rows["lower_08"] == np.round(rows["lower_08"]))
    bad = moejax("fit", "--data=counts.csv", "--target=a", "--experts=2", "--family=poisson",
                 "--out=bad.npz", cwd=tmp_path)
    assert bad.returncode != 0 and "non-negative integer count" in bad.stderr
    assert "line 2" in bad.stderr and not (tmp_path / "bad.npz").exists()


def test_fit_with_a_gate_on_its_own_columns_and_with_a_constant_gate(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(600, 2))
    v = 10 + 3 * rng.normal(size=600)
    y = np.where(v > 10, 1 + 2 * x[:, 0], -1 - x[:, 1]) + 0.3 * rng.normal(size=600)
    write_csv(tmp_path / "t.csv", ["a", "b", "v", "y"], np.c_[x, v, y].tolist())
    out = moejax("fit", "--data=t.csv", "--target=y", "--experts=2", "--gate=v",
                 "--num_refine_iters=50", "--out=m.npz", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = moejax("summary", "--model=m.npz", cwd=tmp_path).stdout
    assert "target y on a, b; gate on v" in summary
    out = moejax("fit", "--data=t.csv", "--target=y", "--experts=2", "--gate=",
                 "--features=a,b", "--num_refine_iters=50", "--out=c.npz", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert mj.io.load(tmp_path / "c.npz").columns.gate == ()
    bad = moejax("fit", "--data=t.csv", "--target=y", "--experts=2", "--gate=w",
                 "--out=bad.npz", cwd=tmp_path)
    assert bad.returncode != 0 and "--gate: column 'w' is not in" in bad.stderr

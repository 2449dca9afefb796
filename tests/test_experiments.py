"""The experiment binaries at tiny sizes: they run and write well-formed outputs."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(module, *args):
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    return out


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_demo_succeeds_and_writes_json(tmp_path):
    out = run("experiments.demo", "--n=20000", "--n_test=2000", "--max_gating_error=2",
              f"--output_json={tmp_path / 'demo.json'}")
    assert out.returncode == 0, out.stderr
    assert "recovery OK" in out.stdout
    result = json.loads((tmp_path / "demo.json").read_text())
    assert 0 <= result["expert_error"] < 0.5 and len(result["mixing_true"]) == 3


@pytest.mark.slow  # make test-all; keeps the default suite near 10 minutes
def test_demo_exits_nonzero_when_recovery_fails():
    out = run("experiments.demo", "--n=200", "--n_test=100", "--num_gating_iters=2",
              "--max_expert_error=0.01")
    assert out.returncode == 1 and "recovery FAILED" in out.stdout


@pytest.mark.slow  # make test-all; keeps the default suite near 10 minutes
def test_synthetic_sweep(tmp_path):
    # Two of the four methods and one n keep it to two compilations (each method is tested
    # elsewhere).
    out = run("experiments.synthetic_sweep", "--ns=500", "--num_seeds=2", "--gd_steps=3",
              "--methods=moments,gd", f"--output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    rows = read_csv(tmp_path / "synthetic_sweep.csv")
    assert len(rows) == 2 * 2
    assert {r["method"] for r in rows} == {"moments", "gd"}
    assert all(float(r["expert_error"]) >= 0 for r in rows)
    assert json.loads((tmp_path / "synthetic_sweep.json").read_text())["num_seeds"] == 2
    assert (tmp_path / "synthetic_sweep.png").stat().st_size > 1000


@pytest.mark.slow  # make test-all; keeps the default suite near 10 minutes
def test_failure_rates(tmp_path):
    out = run("experiments.failure_rates", "--settings=base", "--num_seeds=2", "--n_scale=0.02",
              "--methods=moments,em", f"--output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "failure_rates.json").read_text())
    rate, median, passes, converged = summary["failure_rate_and_median"]["base"]["em"]
    assert 0 <= rate <= 1 and median >= 0 and passes >= 1 and 0 <= converged <= 1
    rows = read_csv(tmp_path / "failure_rates.csv")
    assert len(rows) == 4 and all(int(r["passes"]) >= 1 for r in rows if r["method"] == "em")
    assert "| base:" in out.stdout


def test_unknown_names_are_rejected(tmp_path):
    out = run("experiments.failure_rates", "--settings=nope", f"--output_dir={tmp_path}")
    assert out.returncode != 0 and "unknown settings" in out.stderr
    out = run("experiments.synthetic_sweep", "--methods=magic", f"--output_dir={tmp_path}")
    assert out.returncode != 0 and "method must be one of" in out.stderr


@pytest.mark.slow  # make test-all; keeps the default suite near 10 minutes
def test_bench_sweep(tmp_path):
    out = run("experiments.bench_sweep", "--num_seeds=2", "--n=500", "--repeats=1",
              f"--output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "bench_sweep.json").read_text())
    assert result["speedup_compile_excluded"] > 0


@pytest.mark.slow  # make test-all; keeps the default suite near 10 minutes
def test_error_table(tmp_path):
    out = run("experiments.error_table", "--nonlinearities=tanh", "--ns=500",
              "--num_seeds=2", "--num_gating_iters=3", f"--output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert len(read_csv(tmp_path / "error_table.csv")) == 2
    assert "| tanh |" in out.stdout
    assert (tmp_path / "error_table.png").stat().st_size > 1000


@pytest.mark.slow  # make test-all; keeps the default suite near 10 minutes
def test_airfoil(tmp_path):
    out = run("experiments.airfoil", "--num_splits=1", "--ks=2", "--num_starts=2", "--em_iters=3",
              "--gd_steps=3", "--reference_starts=2", "--reference_iters=5",
              f"--output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    rows = read_csv(tmp_path / "airfoil.csv")
    assert {r["method"] for r in rows} == {"moments", "refine", "em", "gd", "ols"}
    for r in rows:
        assert float(r["test_mse"]) > 0 and abs(float(r["test_nll"])) < 100
        assert abs(float(r["train_nll"])) < 100
        if r["method"] != "ols":
            assert abs(float(r["reference_train_nll"])) < 100
    # Least squares on this data: test MSE about 23 dB^2 (a sanity check on the split and units).
    ols = next(float(r["test_mse"]) for r in rows if r["method"] == "ols")
    assert 15 < ols < 35
    assert (tmp_path / "airfoil.png").stat().st_size > 0
    summary = json.loads((tmp_path / "airfoil.json").read_text())["summary"]
    assert len(summary) == 5


def test_bench_recover_tables_from_saved_rows():
    # The table code runs on rows of every kind the benchmark writes: timed directly or
    # derived, CPU (resident memory) or accelerator (device memory), with or without baselines.
    from experiments import bench_recover
    base = dict(n=1000, d=10, k=3, floor_s=0.001, expert_s=0.01, expert_error=0.1,
                em_pass_s=0.004, em_setup_s=0.001, expert_compile_s=1.0, em_pass_compile_s=1.0,
                em_iters=6, em_passes=13, em_converged=True, gating_error=0.05,
                ref_gating_error=0.0501, recover_derived_s=0.3, input_mb=0.04,
                peak_over_input_mb=5.0)
    rows = [dict(base, recover_s=0.25, numpy_s=2.5, tensorly_expert_s=0.5),
            dict(base, peak_device_mb=10.0, em_converged=False)]
    memory = [dict(n=1000, d=10, k=3, chunk_size=None, input_mb=0.04, rss_with_data_mb=300.0,
                   peak_over_input_mb=1.0, process_peak_rss_mb=301.0, peak_device_mb=None)]
    meta = dict(device="cpu", jax="0", repeats=5, chunk_size=8192)
    lines = bench_recover._table(meta, rows, memory).splitlines()
    assert "| 1e+03 | 10 | 3 | 0.0010 | 0.010 (10x) | 0.100 | 0.0040 (4.0x) | 6 / 13 |" in lines[4]
    assert "| 0.0500 (0.0501) |" in lines[4]
    assert "| 0.25 (250x) |" in lines[4] and "| 10.0 |" in lines[4]  # recover, NumPy / recover
    assert "6 / 13, not converged" in lines[5]
    assert "0.30 (300x) derived" in lines[5] and lines[5].endswith("| 10 |")  # device - input
    assert lines[-1].startswith("| 1e+03 | 10 | one block | 0 | 300 | 1 | 301 | - |")


@pytest.mark.slow  # make test-all; keeps the default suite near 10 minutes
def test_peer_flexmix_without_r(tmp_path):
    out = run("experiments.peer_flexmix", "--num_splits=1", "--ks=2", "--num_refine_iters=5",
              "--num_refine_inits=1", "--flexmix=false", f"--output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert "flexmix not run: --flexmix=false" in out.stdout
    rows = read_csv(tmp_path / "peer_flexmix.csv")
    assert [r["method"] for r in rows] == ["ols", "moejax", "moejax_shared"]
    assert all(float(r["test_mse"]) > 0 and abs(float(r["train_nll"])) < 100 for r in rows)
    summary = json.loads((tmp_path / "peer_flexmix.json").read_text())["summary"]
    assert {s["method"] for s in summary} == {"ols", "moejax", "moejax_shared"}
    assert (tmp_path / "peer_flexmix.png").stat().st_size > 1000


@pytest.mark.slow  # make test-all
def test_generalisation_without_r(tmp_path):
    out = run("experiments.generalisation", "--tables=diabetes", "--num_splits=1",
              "--min_test_rows=0", "--ks=2", "--flexmix=false", f"--output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    rows = read_csv(tmp_path / "generalisation.csv")
    assert [r["method"] for r in rows] == ["ols", "moejax", "moejax_ml"]
    assert all(0 <= float(r["coverage"]) <= 1 and float(r["test_mse"]) > 0 for r in rows)
    summary = json.loads((tmp_path / "generalisation.json").read_text())["summary"]
    assert {(s["method"], s["k"]) for s in summary} == {("ols", 1), ("moejax", 2),
                                                        ("moejax_ml", 2)}
    assert "| diabetes | moejax | 2 |" in out.stdout
    assert (tmp_path / "generalisation.png").stat().st_size > 1000


@pytest.mark.slow  # make test-all
def test_prior_small_n(tmp_path):
    out = run("experiments.prior_small_n", "--ns=40,400", "--num_seeds=1", "--dim=3",
              f"--output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "prior_small_n.json").read_text())["summary"]
    assert [(s["n"], s["method"]) for s in summary] == [
        (n, m) for n in (40, 400) for m in ("ols", "moejax", "moejax_ml")]
    # 400 rows of a k = 2 truth: the mixtures beat least squares on held-out rows.
    big = {s["method"]: s["excess_nll"] for s in summary if s["n"] == 400}
    assert big["moejax"] < big["ols"] and big["moejax_ml"] < big["ols"]
    assert (tmp_path / "prior_small_n.png").stat().st_size > 1000


_SCORES = """
import numpy as np, pytest
import moejax as mj
from experiments import flexmix
rng = np.random.default_rng(0)
x, y = rng.normal(size=(300, 3)), rng.normal(size=300)
experts, gate = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
gate[0] = 0.0
sigma = np.array([0.5, 1.5])
pred, ll = flexmix.mixture_scores(dict(experts=experts, gate=gate, sigma=sigma), x, y)
last = lambda a: np.c_[a[:, 1:], a[:, :1]]  # intercept column to the end
params = mj.MoEParams(last(experts), last(gate - gate[1]), sigma)
z = np.c_[x, np.ones(len(x))]
assert ll == pytest.approx(float(mj.log_likelihood(params, z, y)), rel=1e-5)
np.testing.assert_allclose(pred, mj.predict(params, z), rtol=1e-4, atol=1e-5)
# Binomial and Poisson experts on columns 0 and 1, the gate on column 2 alone: moejax's
# design [x_e, 1, x_gate, 1].
for family, g, target in (("binomial", "sigmoid", (rng.uniform(size=300) < 0.4) * 1.0),
                          ("poisson", "exp", rng.poisson(2.0, size=300) * 1.0)):
    experts, gate = rng.normal(size=(2, 3)) * 0.5, rng.normal(size=(2, 2))
    gate[0] = 0.0
    fitted = dict(experts=experts, gate=gate, sigma=np.ones(2), expert_columns=[0, 1],
                  gate_columns=[2])
    pred, ll = flexmix.mixture_scores(fitted, x, target, family)
    params = mj.MoEParams(last(experts), last(gate - gate[1]), 1.0, g, family)
    u = np.c_[x[:, :2], np.ones(len(x)), x[:, 2], np.ones(len(x))]
    assert ll == pytest.approx(float(mj.log_likelihood(params, u, target)), rel=1e-5), family
    np.testing.assert_allclose(pred, mj.predict(params, u), rtol=1e-4, atol=1e-5)
print("SCORES OK")
"""


def test_flexmix_parameters_are_scored_as_the_same_model():
    # flexmix's layout (intercept first, first gate row zero) scored by the experiment equals
    # moejax's likelihood of the same model (intercept last, last gate row zero), for every
    # family and a gate on its own column. In its own process: the binary's absl flags would
    # clash with another binary's imported here.
    out = subprocess.run([sys.executable, "-c", _SCORES], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and "SCORES OK" in out.stdout, out.stderr


def test_peer_families_says_what_it_needs(tmp_path):
    # Its tables come from R's packages: without R it says so and writes nothing; with R (a
    # peer's machine), one table, one split.
    out = run("experiments.peer_families", "--tables=npreg_binary", "--num_splits=2",
              "--ks=2", f"--output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    if "flexmix is not available" in out.stdout:
        assert not list(tmp_path.iterdir())
        return
    rows = read_csv(tmp_path / "peer_families.csv")
    assert {r["method"] for r in rows} == {"moejax", "moejax_ml", "glm", "flexmix"}
    summary = json.loads((tmp_path / "peer_families.json").read_text())["summary"]
    assert summary[0]["ml_train_minus_flexmix"]["mean"] < 0.005
    assert (tmp_path / "peer_families.png").stat().st_size > 1000


@pytest.mark.slow  # about 25 s of experiment
def test_failure_map_runs_and_resumes(tmp_path):
    args = ("experiments.failure_map", "--num_seeds=1", "--num_starts=2", "--max_iters=10",
            "--cells=k4_d12_c0.5_s0.3_w2.0_linear_n10000", f"--output_dir={tmp_path}")
    out = run(*args)
    assert out.returncode == 0, out.stderr
    rows = read_csv(tmp_path / "failure_map.csv")
    assert len(rows) == 8  # one seed, every method
    oracle = next(r for r in rows if r["method"] == "oracle")
    assert float(oracle["shortfall"]) == 0.0
    assert all(float(r["expert_error"]) >= 0 and int(r["passes"]) >= 1 for r in rows)
    summary = json.loads((tmp_path / "failure_map.json").read_text())["summary"]
    assert {s["method"] for s in summary} == {"random_1", "random_5", "random_R", "gd_1",
                                              "moments", "refine", "refine+4"}
    assert (tmp_path / "failure_map.png").stat().st_size > 1000
    again = run(*args)  # resumable: the cell is in the CSV already
    assert again.returncode == 0 and "done before, skipped" in again.stdout
    assert len(read_csv(tmp_path / "failure_map.csv")) == 8


@pytest.mark.slow  # make test-all; streaming itself is tested in test_streams
def test_bench_stream(tmp_path):
    out = run("experiments.bench_stream", "--n=3000", "--d=6", "--k=2", "--chunk_size=512",
              "--repeats=1", f"--data_dir={tmp_path / 'data'}", "--keep_data=false",
              f"--output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "bench_stream.json").read_text())
    # Every pass reads every row once.
    passes = result["recover"]["passes_over_x"]
    assert passes == 3 + result["recover"]["gating_em_passes"]  # M2, M3, X^T X, the EM
    assert all(len(v) == 1 for name, v in result["read_gbps"].items() if "pass" in name)
    assert (tmp_path / "bench_stream.png").stat().st_size > 1000
    assert not list((tmp_path / "data").iterdir())  # --keep_data=false


def test_results_page_tables_match_their_json(tmp_path):
    out = run("experiments.results_page", "--check")
    assert out.returncode == 0, out.stderr
    assert "docs/results.md: 17 tables match" in out.stdout
    assert "docs/inference.md: 4 tables match" in out.stdout
    assert "docs/failure_map.md: 3 tables match" in out.stdout
    assert "docs/solvers.md: 1 tables match" in out.stdout
    # A number edited by hand is caught, and rewriting the page restores it.
    page = (pathlib.Path(ROOT) / "docs" / "results.md").read_text()
    tampered = tmp_path / "results.md"
    tampered.write_text(page.replace("| linear | 0.278 /", "| linear | 0.250 /", 1))
    assert run("experiments.results_page", "--check", f"--page={tampered}").returncode == 1
    assert run("experiments.results_page", f"--page={tampered}").returncode == 0
    assert tampered.read_text() == page


@pytest.mark.slow  # make test-all; the seed-by-seed path is in the default suite
def test_failure_map_batched_seeds_and_shards_equal_the_seed_by_seed_run(tmp_path):
    # The GPU path: two seeds vmapped in one call, the grid split over two shards; the same
    # seeds, methods and (up to rounding) numbers as one seed at a time.
    common = ("experiments.failure_map", "--num_seeds=2", "--num_starts=2", "--max_iters=20",
              "--cells=k4_d12_c0.5_s0.3_w2.0_linear_n10000")
    assert run(*common, f"--output_dir={tmp_path / 'one'}").returncode == 0
    batched = run(*common, "--batch_rows=20000", "--shard=0/2",
                  f"--output_dir={tmp_path / 'batched'}")
    assert batched.returncode == 0, batched.stderr
    assert "seeds 1-2 of 2" in batched.stdout
    one = read_csv(tmp_path / "one" / "failure_map.csv")
    got = read_csv(tmp_path / "batched" / "failure_map.csv")
    assert [(r["seed"], r["method"]) for r in got] == [(r["seed"], r["method"]) for r in one]
    for a, b in zip(got, one):
        assert abs(float(a["expert_error"]) - float(b["expert_error"])) < 1e-3
        assert abs(float(a["shortfall"]) - float(b["shortfall"])) < 1e-4
        assert a["device"] == b["device"]
    # The other shard of a one-cell grid has nothing to do.
    empty = run(*common, "--shard=1/2", f"--output_dir={tmp_path / 'empty'}")
    assert empty.returncode == 0 and "nothing written" in empty.stdout, empty.stderr


@pytest.mark.slow  # make test-all; keeps the default suite near 10 minutes
def test_calibration(tmp_path):
    out = run("experiments.calibration", "--num_seeds=3", "--settings=linear_k2_n400",
              f"--output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    s = json.loads((tmp_path / "calibration.json").read_text())["settings"]["linear_k2_n400"]
    assert len(s["z_sd"]) == len(s["coefficients"]) == 2 * 4 + 4 + 2
    assert all(0 <= c <= 1 for c in s["coverage"])
    assert (tmp_path / "calibration.png").stat().st_size > 1000


@pytest.mark.slow  # make test-all; keeps the default suite near 10 minutes
def test_intervals(tmp_path):
    out = run("experiments.intervals", "--num_splits=1", "--ks=2", "--levels=0.5,0.9",
              f"--output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    r = json.loads((tmp_path / "intervals.json").read_text())
    assert [(s["method"], s["level"]) for s in r["summary"]] == [
        ("ols", 0.5), ("ols", 0.9), ("moejax", 0.5), ("moejax", 0.9)]
    assert all(0.3 < s["coverage"] < 1 and s["width"] > 0 for s in r["summary"])
    assert len(r["example_split0"]["cluster"]) == 1503 // 5


@pytest.mark.slow  # make test-all; keeps the default suite near 10 minutes
def test_designed_losses(tmp_path):
    out = run("experiments.designed_losses", "--ns=500,1000", "--num_seeds=2", "--num_starts=2",
              "--cells=k4_d12_c0.5_s0.3_w2.0_linear_n10000", f"--output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    rows = read_csv(tmp_path / "designed_losses.csv")
    assert len(rows) == 4 * 2 * 2 and {r["method"] for r in rows} == {"moments", "descent",
                                                                        "em", "gd"}
    cells = read_csv(tmp_path / "designed_losses_cells.csv")
    assert len(cells) == 2 and all(0 <= float(r["reached"]) <= 1 for r in cells)
    summary = json.loads((tmp_path / "designed_losses.json").read_text())["summary"]
    assert set(summary["methods"]) == {"moments", "descent", "em", "gd"}
    assert summary["gating"]["median_em_passes"] > 0
    assert (tmp_path / "designed_losses.png").stat().st_size > 1000

r"""The tables of docs/results.md, docs/failure_map.md and docs/solvers.md, made from the
committed JSON under experiments/results.

    python -m experiments.results_page            # rewrite the tables in the pages
    python -m experiments.results_page --check    # exit 1 if any table differs from its JSON

Each table sits between `<!-- table: NAME -->` and `<!-- end table -->` in a page; NAME is
a results file (experiments/results/NAME.json, NAME may name a subfolder), rendered by the
function below named as the file. The prose around the tables is written by hand; the numbers
in the tables are not.
"""

import json
import os
import re
import sys

from absl import app, flags
import numpy as np

from experiments import common

_PAGES = flags.DEFINE_list("page", ["docs/results.md", "docs/failure_map.md", "docs/solvers.md",
                                   "docs/inference.md"],
                           "The pages whose tables are rewritten.")
_RESULTS = flags.DEFINE_string("results_dir", "experiments/results", "Where the JSON lives.")
_CHECK = flags.DEFINE_bool("check", False, "Only compare; exit 1 if a table is out of date.")



def error_table(r) -> str:
    """Median expert / gating error of recover by non-linearity and n."""
    ns = sorted({row["n"] for row in r["rows"]})
    gs = list(dict.fromkeys(row["nonlinearity"] for row in r["rows"]))
    lines = ["| g | " + " | ".join(f"n = 1e{int(np.log10(n))}" for n in ns) + " |",
             "|---|" + "---|" * len(ns)]
    for g in gs:
        cells = []
        for n in ns:
            mine = [row for row in r["rows"] if row["nonlinearity"] == g and row["n"] == n]
            cells.append(f"{np.median([m['expert_error'] for m in mine]):.3f} / "
                         f"{np.median([m['gating_error'] for m in mine]):.3f}")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failure_rates(r) -> str:
    """Failure rate (median error; median passes) per setting and method."""
    methods = list(next(iter(r["failure_rate_and_median"].values())))
    lines = ["| setting | " + " | ".join(common.LABELS[m] for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for name, by_method in r["failure_rate_and_median"].items():
        s = r["settings"][name]
        described = (f"{s['nonlinearity']}, k = {s['num_experts']}, sigma = "
                     f"{s['noise_std']:g}, gate norm {s['gating_norm']:g}")
        cells = [f"{rate:.2f} ({median:.3f})" if passes < 0 else
                 f"{rate:.2f} ({median:.3f}; {passes:.0f})"
                 for rate, median, passes, _ in by_method.values()]
        lines.append(f"| {name}: {described} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def synthetic_sweep(r) -> str:
    """Median expert error (median passes) per n and method."""
    methods = list(dict.fromkeys(row["method"] for row in r["rows"]))
    short = {"moments": "recover", "refine": "recover + joint EM", "em": "joint EM, random",
             "gd": "joint GD, random"}
    lines = ["| n | " + " | ".join(short[m] for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for n in sorted({row["n"] for row in r["rows"]}):
        cells = []
        for m in methods:
            mine = [row for row in r["rows"] if row["method"] == m and row["n"] == n]
            error = np.median([row["expert_error"] for row in mine])
            passes = np.median([row["passes"] for row in mine])
            cells.append(f"{error:.3f}" if passes < 0 else f"{error:.3f} ({passes:.0f})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench_sweep(r) -> str:
    """vmap against a loop of jitted calls, with and without compilation."""
    lines = ["| | vmap (one call) | Python loop of a jitted call | speed-up |",
             "|---|---|---|---|"]
    for label, key in (("compile included", "compile_included"),
                       ("compile excluded", "compile_excluded")):
        t = r[key + "_s"]
        lines.append(f"| {label} | {t['vmap']:.2f} s | {t['loop']:.2f} s | "
                     f"{r['speedup_' + key]:.1f}x |")
    return "\n".join(lines)


def airfoil(r) -> str:
    """Test MSE / NLL, the gap to the reference likelihood and the warm time per method and k."""
    labels = {"ols": "least squares (the floor)", "moments": "moments + gating EM",
              "refine": "`fit(per_expert_noise=False)`: moment start + 16 random starts, joint EM",
              "em": "joint EM, best of 5 random starts",
              "gd": "joint GD (Adam), best of 5 random starts"}
    lines = ["| method | k | test MSE | test NLL | max train-NLL gap | splits within 0.005 | "
             "warm fit (s) |", "|---|---|---|---|---|---|---|"]
    first_fit = True
    for s in sorted(r["summary"], key=lambda s: (s["k"], list(labels).index(s["method"]))):
        label = labels[s["method"]]
        if s["method"] == "refine":
            label, first_fit = (label if first_fit else "`fit`"), False
        cells = [f"{s['mse_mean']:.2f} +- {s['mse_std']:.2f}",
                 f"{s['nll_mean']:.3f} +- {s['nll_std']:.3f}"]
        if s["method"] == "ols":
            lines.append(f"| {label} | - | " + " | ".join(cells) + " | | | |")
            continue
        cells += [f"{s['max_gap_to_reference']:.3f}",
                      f"{s['splits_within_0_005']}/{r['num_splits']}",
                      f"{s['warm_seconds']:.3f}"]
        lines.append(f"| {label} | {s['k']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peer_flexmix(r) -> str:
    """moejax's fit, least squares and R flexmix on the same splits."""
    labels = {"ols": "least squares", "moejax": "`fit` (sigma per expert, the default)",
              "moejax_shared": "`fit(per_expert_noise=False)`",
              "flexmix": "R flexmix, best of 5"}
    lines = ["| method | k | test MSE | test NLL | train NLL | train NLL - flexmix's (worst "
             "split) | fit s (first / warm) |", "|---|---|---|---|---|---|---|"]
    for s in sorted(r["summary"], key=lambda s: (s["method"] != "ols", s["k"],
                                                  list(labels).index(s["method"]))):
        if s["method"] == "ols":
            gap, seconds, k = "-", "-", "-"
        elif s["method"] == "flexmix":
            gap, seconds, k = "-", f"{s['warm_seconds']:.2f}", s["k"]
        else:
            gap = f"{s['train_nll_minus_flexmix_max']:+.4f}"
            seconds, k = f"{s['first_seconds']:.1f} / {s['warm_seconds']:.2f}", s["k"]
        lines.append(f"| {labels[s['method']]} | {k} | {s['test_mse']:.2f} +- "
                     f"{s['test_mse_sd']:.2f} | {s['test_nll']:.4f} +- {s['test_nll_sd']:.3f} | "
                     f"{s['train_nll']:.4f} | {gap} | {seconds} |")
    return "\n".join(lines)


def peer_families(r) -> str:
    """Binomial and Poisson experts against the GLM and R flexmix (experiments.peer_families)."""
    return common.peer_families_table(r["summary"])


def failure_map(r) -> str:
    """Fraction of seeds stuck per cell and method (median passes), the oracle's error."""
    methods = {"random_1": "1 random", "random_5": "best of 5", "random_R": "best of 20",
               "gd_1": "GD, 1 start", "refine": "moments + refine", "refine+4": "refine + 4"}
    by = {(s["cell"], s["method"]): s for s in r["summary"]}
    lines = ["| cell | " + " | ".join(methods.values()) + " | oracle's error |",
             "|---|" + "---|" * (len(methods) + 1)]
    for cell in dict.fromkeys(s["cell"] for s in r["summary"]):
        cells = [f"{by[cell, m]['stuck']:.2f} ({by[cell, m]['median_passes']:.0f})"
                 for m in methods]
        lines.append(f"| {cell} | " + " | ".join(cells)
                     + f" | {by[cell, 'refine']['oracle_error']:.3f} |")
    return "\n".join(lines)


def refine_screening(r) -> str:
    """Largest loss of the best final likelihood per screening length and number kept."""
    keeps = len(next(iter(r["worst"].values())))
    lines = ["| screening iterations | " + " | ".join(f"keep {k + 1}" for k in range(keeps))
             + " |", "|---|" + "---|" * keeps]
    for screen, losses in r["worst"].items():
        lines.append(f"| {screen} | " + " | ".join(f"{v:.4f}" for v in losses) + " |")
    return "\n".join(lines)


def calibration(r) -> str:
    """Per setting: the range over coefficients of the z-score sd and of the 95% coverage,
    model-based and robust, and the seeds without standard errors."""
    lines = ["| setting | seeds (without SEs) | z sd | coverage | z sd, robust | coverage, robust "
             "| worst coefficient (z sd, coverage) |", "|---|---|---|---|---|---|---|"]
    for name, s in r["settings"].items():
        span = lambda v, f: f"{min(v):{f}} - {max(v):{f}}"
        worst = int(np.argmax(np.abs(np.asarray(s["z_sd"]) - 1)))
        lines.append(f"| {s['g']}, k = {s['k']}, n = {s['n']} | {s['seeds']} "
                     f"({s['without_se']}) | {span(s['z_sd'], '.2f')} | "
                     f"{span(s['coverage'], '.3f')} | {span(s['z_sd_robust'], '.2f')} | "
                     f"{span(s['coverage_robust'], '.3f')} | {s['coefficients'][worst]} "
                     f"({s['z_sd'][worst]:.2f}, {s['coverage'][worst]:.3f}) |")
    return "\n".join(lines)


def intervals(r) -> str:
    """Coverage and mean width of the predictive intervals, by method and level."""
    lines = ["| method | level | coverage (sd over splits) | mean width (dB) |",
             "|---|---|---|---|"]
    for s in r["summary"]:
        method = common.LABELS["ols"] if s["method"] == "ols" else f"moejax fit, k = {s['k']}"
        lines.append(f"| {method} | {s['level']:g} | {s['coverage']:.3f} ({s['coverage_sd']:.3f})"
                     f" | {s['width']:.2f} |")
    return "\n".join(lines)


def generalisation(r) -> str:
    """Held-out scores per public table and k: the default (prior) fit, maximum likelihood,
    least squares and flexmix (experiments.generalisation's own table)."""
    return common.generalisation_table(r["summary"])


def prior_small_n(r) -> str:
    """Excess test NLL over the truth's by rows per parameter (experiments.prior_small_n)."""
    return common.prior_small_n_table(r["summary"])


def designed_losses(r) -> str:
    """Median expert / gating error (median passes; warm ms per pass) per n and method, and
    the slope of log(median expert error) on log(n) (experiments.designed_losses, part 1)."""
    methods = r["summary"]["methods"]
    ns = list(next(iter(methods.values()))["median_expert_error"])
    lines = ["| method | " + " | ".join(f"n = {int(n):,}" for n in ns) + " | slope |",
             "|---|" + "---|" * (len(ns) + 1)]
    for m, v in methods.items():
        cells = [f"{v['median_expert_error'][n]:.3f} / {v['median_gating_error'][n]:.3f} "
                 f"({v['median_passes'][n]:.0f}; {1e3 * v['seconds_per_pass'][n]:.2f} ms)"
                 for n in ns]
        lines.append(f"| {common.LABELS[m]} | " + " | ".join(cells) + f" | {v['slope']:.2f} |")
    return "\n".join(lines)


def designed_losses_cells(r) -> str:
    """Per failure-map cell: the fraction of single-start descents that reached the truth's
    basin, the fraction that collapsed, the kept start's expert error (up to signs) beside the
    tensor method's, and the median Adam steps (experiments.designed_losses, part 2)."""
    lines = ["| cell | starts in the basin | starts collapsed | kept start's error (up to "
             "signs) | tensor method's error | median steps |", "|---|---|---|---|---|---|"]
    for name, v in r["summary"]["cells"].items():
        lines.append(f"| {name} | {v['reached']:.2f} | {v['collapsed']:.2f} | "
                     f"{v['median_kept_error']:.3f} "
                     f"({v['median_kept_error_up_to_signs']:.3f}) | "
                     f"{v['median_tensor_error']:.3f} | {v['median_steps']:.0f} |")
    return "\n".join(lines)


RENDERERS = {f.__name__: f for f in (error_table, failure_rates, synthetic_sweep, bench_sweep,
                                     airfoil, peer_flexmix, peer_families, failure_map,
                                     refine_screening,
                                     calibration, intervals, generalisation, prior_small_n,
                                     designed_losses, designed_losses_cells)}
# A block may be empty (a new table) but never runs into the next block.
_BLOCK = re.compile(r"(<!-- table: ([\w/]+) -->\n)((?:(?!<!-- table:).)*?)\n?<!-- end table -->",
                    re.S)


def render_page(text: str, results_dir: str) -> str:
    """The page with every marked table made again from its JSON."""
    def one(match):
        name = match.group(2)
        render = RENDERERS.get(os.path.basename(name))
        if render is None:
            raise ValueError(f"no renderer for the table {name!r}; known: {sorted(RENDERERS)}")
        with open(os.path.join(results_dir, name + ".json")) as f:
            return match.group(1) + render(json.load(f)) + "\n<!-- end table -->"
    return _BLOCK.sub(one, text)


def main(argv):
    del argv
    stale = []
    for page in _PAGES.value:
        with open(page) as f:
            text = f.read()
        made = render_page(text, _RESULTS.value)
        tables = len(_BLOCK.findall(text))
        if _CHECK.value:
            if made != text:
                stale.append(page)
            print(f"{page}: {tables} tables" + (" differ from their JSON" if made != text
                                                else " match their JSON"))
            continue
        with open(page, "w") as f:
            f.write(made)
        print(f"{page}: {tables} tables written")
    if stale:
        print(f"{', '.join(stale)}: run python -m experiments.results_page", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)

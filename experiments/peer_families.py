r"""Binomial and Poisson experts against R's flexmix on public tables with a 0/1 or count
target (issue 39's comparison): the same 80/20 splits through both.

    python -m experiments.peer_families

Tables (`public_tables.load_glm`): flexmix's NPreg (its Poisson response on x and x^2, its
binary response on x), flexmix's bioChemists (articles, a count, on 5 features), MASS's
Pima diabetes table (0/1 on 7 features) and flexmix's patent table (patents on log R&D, the
gate on R&D per sales: flexmix's concomitant-variable example; both tools fit the gate on its
own column). On each (table, k), for every split:
- `moejax`: `fit(family=...)` with its defaults (the prior, 16 random starts): test NLL per row,
  fit time (the first split's includes compilation, later ones run compiled: "warm"), and
  whether the fit is degenerate (`degeneracy()` not empty);
- `moejax_ml`: the same with `prior=None`, whose training NLL is compared with flexmix's (both
  are maximum likelihood);
- `glm`: one expert, the family's GLM (`num_experts=1`), the floor a mixture must beat;
- `flexmix`: stepFlexmix(y ~ ., k, nrep = 5, FLXMRglm(family), FLXPmultinom(~ . - y)), best of
  5 starts, scored here from its coefficients (test and training NLL); a fit that removed a
  component (its minprior) counts as degenerate.

R is optional (`apt-get install r-base-core r-cran-flexmix r-cran-mass`): the tables come from
R's packages, so without R the binary says so and exits without results. Writes
peer_families.{json,csv,png} to --output_dir and prints a markdown table.
"""

import os
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

import moejax as mj
from experiments import common, flexmix, public_tables

_TABLES = flags.DEFINE_list("tables", list(public_tables.GLM_NAMES), "Tables to run.")
_SPLITS = flags.DEFINE_integer("num_splits", 10, "Random 80/20 splits (seeds 0..num_splits-1).")
_KS = flags.DEFINE_list("ks", ["2", "3"], "Numbers of experts.")
_FLEXMIX = flags.DEFINE_bool("flexmix", True, "Run R flexmix when it is installed.")
_NREP = flags.DEFINE_integer("nrep", 5, "flexmix random starts (stepFlexmix's nrep).")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")

METHODS = common.PEER_FAMILIES_METHODS


def _moejax(key, family, roles, k, x_tr, y_tr, x_te, y_te, **settings) -> dict:
    tic = time.perf_counter()
    model = jax.block_until_ready(mj.fit(key, x_tr, y_tr, num_experts=k, family=family,
                                         standard_errors=False, expert_columns=roles[0],
                                         gate_columns=roles[1], **settings))
    seconds = time.perf_counter() - tic
    return dict(test_nll=-float(model.log_likelihood(x_te, y_te)),
                train_nll=-float(model.log_likelihood(x_tr, y_tr)), seconds=seconds,
                components=model.num_experts, degenerate=bool(model.degeneracy()))


def _flexmix(family, roles, k, seed, x_tr, y_tr, x_te, y_te, workdir) -> dict:
    fitted = flexmix.run(x_tr, y_tr, k, seed, _NREP.value, workdir, family=family,
                         expert_columns=roles[0], gate_columns=roles[1])
    return dict(test_nll=-flexmix.mixture_scores(fitted, x_te, y_te, family)[1],
                train_nll=-flexmix.mixture_scores(fitted, x_tr, y_tr, family)[1],
                seconds=fitted["seconds"], components=fitted["components"],
                degenerate=fitted["components"] < k)


def main(argv):
    del argv
    why = flexmix.available()
    if why:
        print(f"R's flexmix is not available ({why}): the tables come from R's packages, so "
              "there is nothing to run.")
        return
    use_flexmix = _FLEXMIX.value
    ks = [int(k) for k in _KS.value]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in _TABLES.value:
            x, y, family, description, roles = public_tables.load_glm(name)
            print(f"{name}: {description} ({family})", flush=True)
            for k in ks:
                for split in range(_SPLITS.value):
                    key, tr, te = common.split(split, len(y))
                    data = (x[tr], y[tr], x[te], y[te])
                    out = dict(moejax=_moejax(key, family, roles, k, *data),
                               moejax_ml=_moejax(key, family, roles, k, *data, prior=None),
                               glm=_moejax(key, family, roles, 1, *data))
                    if use_flexmix:
                        out["flexmix"] = _flexmix(family, roles, k, split, *data, workdir)
                    for method, scores in out.items():
                        rows.append(dict(table=name, family=family, k=k, split=split,
                                         method=method, **scores))
                    print(f"  k={k} split {split}: test NLL "
                          + ", ".join(f"{m} {s['test_nll']:.4f}" for m, s in out.items()),
                          flush=True)
    summary = summarise(rows)
    meta = dict(moejax=mj.__version__, jax=jax.__version__, flexmix=flexmix.version(),
                splits=_SPLITS.value, nrep=_NREP.value, devices=str(jax.devices()))
    base = os.path.join(_OUT.value, "peer_families")
    common.write_rows(base, rows, dict(meta=meta, summary=summary))
    plot(summary, base + ".png")
    print(common.peer_families_table(summary))
    print(f"wrote {base}.csv, .json, .png")


def _se(values) -> float:
    values = np.asarray(values, float)
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def summarise(rows) -> list[dict]:
    """One dict per (table, k): means over splits, and the paired differences the goals
    read, each with its standard error over the splits."""
    out = []
    for name in dict.fromkeys(r["table"] for r in rows):
        for k in sorted({r["k"] for r in rows if r["table"] == name}):
            cell = [r for r in rows if r["table"] == name and r["k"] == k]
            by = {m: sorted((r for r in cell if r["method"] == m), key=lambda r: r["split"])
                  for m in METHODS}
            get = lambda m, f: np.array([r[f] for r in by[m]], float)
            entry = dict(table=name, family=cell[0]["family"], k=k, splits=len(by["moejax"]))
            for m in METHODS:
                if by[m]:
                    entry[m] = dict(test_nll=float(np.mean(get(m, "test_nll"))),
                                    train_nll=float(np.mean(get(m, "train_nll"))),
                                    first_seconds=float(get(m, "seconds")[0]),
                                    warm_seconds=float(np.median(get(m, "seconds")[1:]))
                                    if len(by[m]) > 1 else float("nan"),
                                    degenerate=int(np.sum(get(m, "degenerate"))))
            pairs = dict(default_minus_glm=("moejax", "glm", "test_nll"))
            if by["flexmix"]:
                pairs.update(default_minus_flexmix=("moejax", "flexmix", "test_nll"),
                             ml_train_minus_flexmix=("moejax_ml", "flexmix", "train_nll"))
            for label, (a, b, field) in pairs.items():
                diff = get(a, field) - get(b, field)
                entry[label] = dict(mean=float(np.mean(diff)), se=_se(diff),
                                    worst=float(np.max(diff)))
            out.append(entry)
    return out


def plot(summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    labels = [e["table"].replace("_", "\n") + f"\nk={e['k']}" for e in summary]
    pos = np.arange(len(summary))
    for i, (m, offset) in enumerate((("glm", -0.2), ("flexmix", 0.2))):
        key = f"default_minus_{m}"
        values = [e[key]["mean"] if key in e else np.nan for e in summary]
        errors = [e[key]["se"] if key in e else 0.0 for e in summary]
        ax.bar(pos + offset, values, 0.4, yerr=errors, label=f"moejax - {m}")
    ax.axhline(0.0, color="k", lw=0.8)
    # Linear within +-0.05 nats per row, logarithmic beyond: flexmix's separated fits cost
    # tens of nats per row where the other differences are hundredths.
    ax.set_yscale("symlog", linthresh=0.05)
    ax.set_xticks(pos, labels, fontsize=7)
    ax.set_ylabel("test NLL per row, difference (symlog)")
    ax.set_title("binomial and Poisson experts: moejax's default fit against the GLM and "
                 "flexmix\n(below 0: moejax better; mean over splits ± se)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)

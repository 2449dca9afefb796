"""R's flexmix (Gruen and Leisch) as a peer, without flags: whether it can run, one fit through
Rscript, and its fitted parameters scored in float64 here, or as a `moejax.FittedMoE` in the
data's units (so that moejax's intervals and posteriors apply to flexmix's fits too).

flexmix fits the same model class as `moejax.fit` by EM: Gaussian linear experts with one sigma
each (or GLM experts of another family) and a multinomial-logit gate,
    stepFlexmix(y ~ ., k = K, nrep = NREP, model = FLXMRglm(family = FAMILY),
                concomitant = FLXPmultinom(~ . - y))
(`~ .` alone would put y into the gate; a binomial y is given as cbind(y, 1 - y)), keeping the
best of NREP random starts by likelihood.
It removes a component whose prior weight falls below 0.05 during EM (its `minprior`), so a fit
may return fewer than K components. R is optional: `apt-get install r-base-core r-cran-flexmix`.
"""

import os
import shutil
import subprocess

import jax.numpy as jnp
import numpy as np
from scipy.special import expit, gammaln, logsumexp

import moejax as mj

# Reads train.csv (target column y), fits, and prints the fitted parameters as
# "name value value ..." lines; all numbers in R's full precision.
_R_SCRIPT = r"""
suppressMessages(library(flexmix))
args <- commandArgs(trailingOnly = TRUE)
train <- read.csv(args[1])
k <- as.integer(args[2]); nrep <- as.integer(args[3]); set.seed(as.integer(args[4]))
family <- args[5]
lhs <- if (family == "binomial") "cbind(y, 1 - y)" else "y"
response <- as.formula(paste(lhs, "~", args[6]))
seconds <- system.time(
  m <- stepFlexmix(response, data = train, k = k, nrep = nrep,
                   model = FLXMRglm(family = family),
                   concomitant = FLXPmultinom(as.formula(paste("~", args[7]))),
                   verbose = FALSE))[["elapsed"]]
out <- function(name, v) cat(name, format(as.numeric(v), digits = 17), "\n")
out("seconds", seconds)
out("components", m@k)
out("iterations", m@iter)
out("converged", as.integer(m@converged))
out("loglik", as.numeric(logLik(m)))
experts <- parameters(m)  # rows: coef.(Intercept), coef.<feature>..., sigma; one column each
# as.numeric reads a matrix by columns: one component's coefficients after another.
out("experts", experts[grep("^coef", rownames(experts)), , drop = FALSE])
if (family == "gaussian") out("sigma", experts["sigma", ])
gate <- parameters(m, which = "concomitant")  # rows: (Intercept), its columns; first column 0
out("gate", gate)
"""


def available() -> str | None:
    """None if Rscript with flexmix can run, else why not."""
    if not shutil.which("Rscript"):
        return "Rscript not found (apt-get install r-base-core r-cran-flexmix)"
    probe = subprocess.run(["Rscript", "-e", "suppressMessages(library(flexmix))"],
                           capture_output=True, text=True)
    if probe.returncode:
        return "R's flexmix package is not installed (apt-get install r-cran-flexmix)"
    return None


def version() -> str:
    out = subprocess.run(["Rscript", "-e", 'cat(as.character(packageVersion("flexmix")), '
                          'R.version$major, R.version$minor)'], capture_output=True, text=True)
    flexmix, major, minor = out.stdout.split()
    return f"flexmix {flexmix}, R {major}.{minor}"


def run(x, y, k, seed, nrep, workdir, family="gaussian", expert_columns=None,
        gate_columns=None):
    """flexmix's fit on (x, y): a dict of its parameters, as arrays with the intercept first
    (experts (kept, d_e + 1), gate (kept, d_gate + 1) with a zero first row, sigma (kept,),
    ones for a family without one), and the columns behind them. family: "gaussian",
    "binomial" (0/1 y) or "poisson"; expert_columns, gate_columns: positions in x, as
    `moejax.fit` takes them (None: all; gate_columns=[]: constant weights).
    Raises RuntimeError with R's last error line, or subprocess.TimeoutExpired."""
    names = [f"x{i + 1}" for i in range(x.shape[1])]
    path = os.path.join(workdir, "train.csv")
    np.savetxt(path, np.c_[x, y], delimiter=",", header=",".join(names + ["y"]), comments="",
               fmt="%.17g")
    script = os.path.join(workdir, "fit.R")
    with open(script, "w") as f:
        f.write(_R_SCRIPT)
    experts = list(range(x.shape[1])) if expert_columns is None else list(expert_columns)
    gate = experts if gate_columns is None else list(gate_columns)
    formula = lambda index: " + ".join(names[i] for i in index) or "1"
    out = subprocess.run(["Rscript", script, path, str(k), str(nrep), str(seed), family,
                          formula(experts), formula(gate)],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "R failed")
    fields = {line.split()[0]: np.array(line.split()[1:], float)
              for line in out.stdout.splitlines() if line.strip()}
    kept = int(fields["components"][0])
    return dict(seconds=float(fields["seconds"][0]), components=kept,
                iterations=int(fields["iterations"][0]),
                converged=bool(fields["converged"][0]), loglik=float(fields["loglik"][0]),
                experts=fields["experts"].reshape(kept, len(experts) + 1),
                sigma=fields.get("sigma", np.ones(kept)),
                gate=fields["gate"].reshape(kept, len(gate) + 1),
                expert_columns=experts, gate_columns=gate)


def mixture_scores(fitted, x, y, family="gaussian"):
    """(predictions (n,), mean log-density per row) of a flexmix fit on [1, x], in float64
    (predictions: the mean response, a probability or a rate for binomial or Poisson)."""
    every = list(range(x.shape[1]))
    design = lambda index: np.c_[np.ones(len(x)), x[:, index]]
    log_gate = design(fitted.get("gate_columns", every)) @ fitted["gate"].T
    log_gate -= logsumexp(log_gate, axis=1, keepdims=True)
    eta, sigma = design(fitted.get("expert_columns", every)) @ fitted["experts"].T, fitted["sigma"]
    yc = y[:, None]
    if family == "gaussian":
        means = eta
        log_dens = (-0.5 * np.square((yc - means) / sigma) - np.log(sigma)
                    - 0.5 * np.log(2 * np.pi))
    elif family == "binomial":  # log sigmoid(+-eta) without overflow
        means = expit(eta)
        log_dens = -np.logaddexp(0.0, np.where(yc == 1, -eta, eta))
    else:
        means = np.exp(eta)
        log_dens = yc * eta - means - gammaln(yc + 1)
    pred = np.sum(np.exp(log_gate) * means, axis=1)
    return pred, float(np.mean(logsumexp(log_gate + log_dens, axis=1)))


def as_fitted(fitted) -> mj.FittedMoE:
    """A flexmix fit of Gaussian experts and a gate on all columns as a FittedMoE on the data's
    own units (an identity standardizer; the intercept column moved last and the gate taken
    relative to its last row)."""
    last = lambda a: np.c_[a[:, 1:], a[:, :1]]
    gate = fitted["gate"] - fitted["gate"][-1]
    d = fitted["experts"].shape[1] - 1
    params = mj.MoEParams(jnp.asarray(last(fitted["experts"]), jnp.float32),
                          jnp.asarray(last(gate), jnp.float32),
                          jnp.asarray(fitted["sigma"], jnp.float32), "linear")
    identity = mj.Standardizer(jnp.zeros(d), jnp.eye(d), jnp.asarray(0.0), jnp.asarray(1.0))
    return mj.FittedMoE(params, identity)

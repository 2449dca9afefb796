"""Public regression tables for the real-data experiments, read from packages already on the
machine (no download): airfoil self-noise (moejax.datasets), scikit-learn's diabetes table,
and four tables of R's MASS and datasets packages through Rscript (apt-get install
r-base-core; MASS comes with it); and, for the binomial and Poisson families, four tables with
a 0/1 or count target from flexmix and MASS, one of them with a gate on its own column
(`load_glm`; apt-get install r-cran-flexmix).

Each loader returns (x (n, d), y (n,), ...) in float64; `load` and `load_glm` raise
`Unavailable` when the package behind a table is missing.
"""

import io
import shutil
import subprocess

import numpy as np

import moejax as mj


class Unavailable(Exception):
    """The package that holds a table is not installed."""


# name -> (R expression giving a data frame whose first column is the target, description).
_R_TABLES = {
    "boston": ("MASS::Boston[, c(14, 1:13)]",
               "Boston housing (MASS::Boston): medv on 13 features, 506 rows"),
    "cpus": ("with(MASS::cpus, data.frame(y = log10(perf), syct, mmin, mmax, cach, chmin, "
             "chmax))", "CPU performance (MASS::cpus): log10(perf) on 6 features, 209 rows"),
    "glass": ("MASS::fgl[, 1:9]",
              "forensic glass (MASS::fgl): refractive index on 8 oxides, 214 rows, 6 glass "
              "types unobserved"),
    "airquality": ("na.omit(airquality)[, 1:5]",
                   "New York air quality (datasets::airquality, complete rows): ozone on "
                   "solar radiation, wind, temperature, month; 111 rows"),
}
NAMES = ("airfoil", "diabetes", *_R_TABLES)

# Tables with a 0/1 or count target: name -> (R expression, family, description). Factors are
# coded 0/1 as flexmix's formulas would code them. _ROLES: the tables whose gate has columns
# of its own, name -> (expert columns, gate columns), positions in x.
_R_GLM_TABLES = {
    "npreg_counts": ("with(flexmix_data('NPreg'), data.frame(yp, x, x2 = x^2))", "poisson",
                     "flexmix::NPreg: the Poisson response yp on x and x^2, 200 rows"),
    "npreg_binary": ("with(flexmix_data('NPreg'), data.frame(yb, x))", "binomial",
                     "flexmix::NPreg: the binary response yb on x, 200 rows"),
    "biochemists": ("with(flexmix_data('bioChemists'), data.frame(art, fem = as.numeric(fem == "
                    "'Women'), mar = as.numeric(mar == 'Married'), kid5, phd, ment))", "poisson",
                    "flexmix::bioChemists: articles of 915 PhD biochemists on 5 features"),
    "pima": ("with(rbind(MASS::Pima.tr, MASS::Pima.te), data.frame(y = as.numeric(type == "
             "'Yes'), npreg, glu, bp, skin, bmi, ped, age))", "binomial",
             "MASS::Pima.tr + Pima.te: diabetes (0/1) of 532 Pima women on 7 features"),
    "patent": ("with(flexmix_data('patent'), data.frame(Patents, lgRD, RDS))", "poisson",
               "flexmix::patent: patents of 70 firms on log R&D spending, the gate on R&D "
               "per sales (flexmix's concomitant example)"),
}
_ROLES = {"patent": ((0,), (1,))}
# flexmix's tables are lazy data, not exported objects: read by name.
_FLEXMIX_DATA = ("flexmix_data <- function(name) "
                 "get(data(list = name, package = 'flexmix', envir = environment()))")
GLM_NAMES = tuple(_R_GLM_TABLES)


def load_glm(name: str):
    """(x, y, family, description, (expert_columns, gate_columns)) of table `name` (one of
    GLM_NAMES); the roles are (None, None) where every column feeds both."""
    if name not in _R_GLM_TABLES:
        raise ValueError(f"unknown table {name!r}; expected one of {GLM_NAMES}.")
    expr, family, description = _R_GLM_TABLES[name]
    x, y = _from_r(f"{{{_FLEXMIX_DATA}; {expr}}}")
    return x, y, family, description, _ROLES.get(name, (None, None))


def _from_r(expr: str):
    """(x, y) of the data frame that R expression `expr` gives, target first."""
    if not shutil.which("Rscript"):
        raise Unavailable("Rscript not found (apt-get install r-base-core r-cran-flexmix)")
    out = subprocess.run(["Rscript", "-e", f"write.csv({expr}, stdout(), row.names = FALSE)"],
                         capture_output=True, text=True)
    if out.returncode:
        raise Unavailable(out.stderr.strip().splitlines()[-1] if out.stderr else "R failed")
    table = np.loadtxt(io.StringIO(out.stdout), delimiter=",", skiprows=1)
    return table[:, 1:], table[:, 0]


def load(name: str):
    """(x, y, description) of table `name` (one of NAMES)."""
    if name == "airfoil":
        data = mj.datasets.load_airfoil()
        return (np.asarray(data.features, np.float64), np.asarray(data.target, np.float64),
                "airfoil self-noise: sound pressure on 5 features, 1503 rows")
    if name == "diabetes":
        try:
            from sklearn.datasets import load_diabetes
        except ImportError as e:
            raise Unavailable("scikit-learn is not installed") from e
        data = load_diabetes()  # bundled with scikit-learn; unscaled target
        return (np.asarray(data.data, np.float64), np.asarray(data.target, np.float64),
                "diabetes (scikit-learn): disease progression on 10 features, 442 rows")
    if name not in _R_TABLES:
        raise ValueError(f"unknown table {name!r}; expected one of {NAMES}.")
    expr, description = _R_TABLES[name]
    x, y = _from_r(expr)
    return x, y, description

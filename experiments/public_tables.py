"""Public regression tables for the real-data experiments, read from packages already on the
machine (no download): airfoil self-noise (moejax.datasets), scikit-learn's diabetes table,
and four tables of R's MASS and datasets packages through Rscript (apt-get install
r-base-core; MASS comes with it).

Each loader returns (x (n, d), y (n,), description) in float64; `load` raises
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
    if not shutil.which("Rscript"):
        raise Unavailable("Rscript not found (apt-get install r-base-core)")
    expr, description = _R_TABLES[name]
    out = subprocess.run(["Rscript", "-e", f"write.csv({expr}, stdout(), row.names = FALSE)"],
                         capture_output=True, text=True)
    if out.returncode:
        raise Unavailable(out.stderr.strip().splitlines()[-1] if out.stderr else "R failed")
    table = np.loadtxt(io.StringIO(out.stdout), delimiter=",", skiprows=1)
    return table[:, 1:], table[:, 0], description

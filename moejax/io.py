"""Saving and loading fitted models: one portable .npz holding the parameters, the
preprocessing, the non-linearity, the column names and the moejax version."""

import json
import os
import tempfile
import zipfile

import numpy as np

from moejax.estimator import FittedMoE
from moejax.model import MoEParams
from moejax.nonlinearities import NONLINEARITIES
from moejax.preprocessing import Standardizer

FORMAT = "moejax-model"
FORMAT_VERSION = 1
_ARRAYS = {
    "experts": ("params", "experts"),
    "gating": ("params", "gating"),
    "noise_std": ("params", "noise_std"),
    "x_mean": ("standardizer", "x_mean"),
    "x_map": ("standardizer", "x_map"),
    "y_mean": ("standardizer", "y_mean"),
    "y_scale": ("standardizer", "y_scale"),
}


def save(path: str | os.PathLike, fitted: FittedMoE) -> None:
    """Writes `fitted` to `path` (.npz) atomically: a temporary file in the same directory is
    written, flushed to disk and renamed over `path`, so an interrupted save leaves either the
    old file or the new one, never a half-written model."""
    from moejax import __version__
    meta = dict(format=FORMAT, format_version=FORMAT_VERSION, moejax_version=__version__,
                nonlinearity=fitted.nonlinearity, feature_names=fitted.feature_names,
                target_name=fitted.target_name)
    arrays = {name: np.asarray(getattr(getattr(fitted, part), field))
              for name, (part, field) in _ARRAYS.items()}

    def write(f):
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    atomic_write(path, write, binary=True)


def atomic_write(path: str | os.PathLike, write, *, binary: bool = False) -> None:
    """Calls write(f) on a temporary file in path's directory, flushes it to disk and renames
    it over `path`: readers see the old file or the whole new one, never a partial write. On
    any exception (Ctrl-C included) the temporary file is removed and `path` is untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".moejax-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load(path: str | os.PathLike) -> FittedMoE:
    """Reads a model written by `save`.

    Raises:
      FileNotFoundError: if `path` does not exist.
      ValueError: if the file is not a moejax model, is truncated or corrupted, or was written
        by a newer moejax in a format this version cannot read.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"][()]))
            arrays = {name: np.array(data[name]) for name in _ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path!r} is not a readable moejax model file (corrupted, truncated "
                         f"or another kind of file): {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a moejax model file.")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} uses model format {version!r}, written by moejax "
            f"{meta.get('moejax_version')}; this moejax reads formats up to {FORMAT_VERSION}. "
            "Upgrade moejax to load it.")
    k, d1 = arrays["experts"].shape if arrays["experts"].ndim == 2 else (0, 0)
    shapes = dict(experts=(k, d1), gating=(k, d1), noise_std=(), x_mean=(d1 - 1,),
                  x_map=(d1 - 1, d1 - 1), y_mean=(), y_scale=())
    bad = [n for n, s in shapes.items() if arrays[n].shape != s or not np.all(np.isfinite(arrays[n]))]
    if k < 2 or bad:
        raise ValueError(f"{path!r} is corrupted: inconsistent or non-finite arrays {bad}.")
    if meta.get("nonlinearity") not in NONLINEARITIES:
        raise ValueError(f"{path!r} names an unknown non-linearity {meta.get('nonlinearity')!r}.")
    names = meta.get("feature_names")
    return FittedMoE(
        MoEParams(arrays["experts"], arrays["gating"], arrays["noise_std"]),
        Standardizer(arrays["x_mean"], arrays["x_map"], arrays["y_mean"], arrays["y_scale"]),
        meta["nonlinearity"], None if names is None else tuple(names), meta.get("target_name"))

"""Saving and loading fitted models: one portable .npz holding the parameters, the
preprocessing, the non-linearity, the column names and the moejax version."""

import contextlib
import glob
import json
import os
import signal
import socket
import stat
import tempfile
import threading
import zipfile

import numpy as np

from moejax.estimator import FittedMoE
from moejax.model import MoEParams
from moejax.nonlinearities import nonlinearity_names
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
_TMP_SUFFIX = ".moejax.tmp"


def default_feature_names(dim: int) -> tuple[str, ...]:
    """The names a model without feature names is saved with: x1, ..., xd."""
    return tuple(f"x{i + 1}" for i in range(dim))


def save(path: str | os.PathLike, fitted: FittedMoE) -> None:
    """Writes `fitted` to `path` (.npz) atomically (see `atomic_write`).

    A model without feature names is saved with `default_feature_names`, so that the command
    line can match it to a table's columns. Raises ValueError, and writes nothing, for a model
    that `load` would refuse (inconsistent shapes, non-finite values, sigma or the target
    scale not positive, an unknown non-linearity, names that do not fit).

    >>> import os, tempfile, jax.numpy as jnp
    >>> from moejax.preprocessing import fit_standardizer
    >>> x, y = np.random.default_rng(0).normal(size=(50, 2)), np.arange(50.0)
    >>> params = MoEParams(jnp.ones((2, 3)), jnp.zeros((2, 3)), jnp.asarray(0.5), "tanh")
    >>> model = FittedMoE(params, fit_standardizer(x, y))  # normally from moejax.fit
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> save(path, model)
    >>> loaded = load(path)
    >>> loaded.nonlinearity, loaded.feature_names, bool(jnp.all(loaded.predict(x) == model.predict(x)))
    ('tanh', ('x1', 'x2'), True)
    """
    from moejax import __version__
    if not isinstance(fitted, FittedMoE):
        raise ValueError(f"save writes a FittedMoE (from moejax.fit), got {type(fitted).__name__}.")
    arrays = {name: np.asarray(getattr(getattr(fitted, part), field))
              for name, (part, field) in _ARRAYS.items()}
    names = fitted.feature_names
    if names is None and arrays["experts"].ndim == 2:
        names = default_feature_names(arrays["experts"].shape[1] - 1)
    meta = dict(format=FORMAT, format_version=FORMAT_VERSION, moejax_version=__version__,
                nonlinearity=fitted.nonlinearity,
                feature_names=None if names is None else list(names),
                target_name=fitted.target_name)
    problem = _problem(meta, arrays)
    if problem:
        raise ValueError(f"cannot save this model: {problem}.")

    def write(f):
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    atomic_write(path, write, binary=True)


def _problem(meta: dict, arrays: dict) -> str | None:
    """What makes (meta, arrays) an invalid model, or None: the checks `save` and `load` share."""
    if any(np.asarray(a).dtype.kind not in "fi" for a in arrays.values()):
        return "its arrays must hold real numbers"
    experts = arrays["experts"]
    k, d1 = experts.shape if experts.ndim == 2 else (0, 0)
    # sigma: one shared, or one per expert.
    sigma_shape = () if arrays["noise_std"].shape == () else (k,)
    shapes = dict(experts=(k, d1), gating=(k, d1), noise_std=sigma_shape, x_mean=(d1 - 1,),
                  x_map=(d1 - 1, d1 - 1), y_mean=(), y_scale=())
    wrong = [n for n, s in shapes.items() if arrays[n].shape != s]
    if k < 1 or d1 < 2 or wrong:
        return (f"inconsistent array shapes {wrong or ['experts']} (experts {experts.shape}; "
                "expected (k, d + 1) with k >= 1)")
    bad = [n for n in shapes if not np.all(np.isfinite(arrays[n]))]
    if bad:
        return f"non-finite values in {bad}"
    if not (np.all(arrays["noise_std"] > 0) and arrays["y_scale"] > 0):
        return (f"noise_std ({np.array2string(arrays['noise_std'], precision=3)}) and y_scale "
                f"({float(arrays['y_scale']):.3g}) must be positive")
    g = meta.get("nonlinearity")
    if not isinstance(g, str) or g not in nonlinearity_names():
        return (f"unknown non-linearity {g!r} (a name in {nonlinearity_names()} is needed; "
                "moejax.register_nonlinearity adds one)")
    names = meta.get("feature_names")
    if names is not None and (not isinstance(names, list) or len(names) != d1 - 1
                              or not all(isinstance(v, str) and v for v in names)
                              or len(set(names)) != len(names)):
        return f"feature_names must be {d1 - 1} distinct non-empty strings, got {names!r}"
    target = meta.get("target_name")
    if target is not None and not isinstance(target, str):
        return f"target_name must be a string, got {target!r}"
    return None


@contextlib.contextmanager
def _terminate_raises():
    """Within the block, SIGTERM raises SystemExit (so that cleanup code runs) instead of
    ending the process at once; only possible in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host() -> str:
    """This host's name as it appears in temporary names: no dots."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"


def _remove_stale_temporaries(path: str) -> None:
    """Deletes temporaries of earlier saves to `path` made on this host by a process that no
    longer runs (a save killed with SIGKILL cannot clean up after itself). Temporaries of
    other hosts (a shared file system) are left alone: their processes cannot be checked."""
    directory, base = os.path.split(path)
    pattern = os.path.join(glob.escape(directory), f".{glob.escape(base)}.*{_TMP_SUFFIX}")
    for tmp in glob.glob(pattern):
        owner = os.path.basename(tmp)[len(base) + 2:].split(".", 1)[0]
        tmp_host, _, pid = owner.rpartition("-")
        if tmp_host == _host() and pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _new_file_mode(path: str) -> int:
    """The mode of the file being replaced, or what the umask gives a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write, *, binary: bool = False) -> None:
    """Calls write(f) on a temporary file in path's directory, flushes it to disk and renames
    it over `path`: readers see the old file or the whole new one, never a partial write.

    The temporary is removed on every exit Python sees (exceptions, Ctrl-C, SIGTERM), and the
    next save to the same path removes those left by a process that was killed outright. The
    written file keeps the mode of the file it replaces, or gets the umask's default.
    """
    path = os.path.abspath(os.fspath(path))
    directory, base = os.path.split(path)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a file to write.")
    _remove_stale_temporaries(path)
    with _terminate_raises():
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.{_host()}-{os.getpid()}.",
                                   suffix=_TMP_SUFFIX, dir=directory)
        try:
            with os.fdopen(fd, "wb" if binary else "w",
                           **({} if binary else {"newline": ""})) as f:
                write(f)
                f.flush()
                os.fchmod(f.fileno(), _new_file_mode(path))
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def load(path: str | os.PathLike) -> FittedMoE:
    """Reads a model written by `save`.

    Raises:
      FileNotFoundError: if `path` does not exist.
      ValueError: for anything else that is not a valid model: a directory, another kind of
        file, a truncated or corrupted model, inconsistent contents, or a format written by a
        newer moejax than this one can read.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a moejax model file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r} does not exist.")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path!r} is not a readable moejax model file (not an .npz archive).")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"][()]))
            arrays = {name: np.array(data[name]) for name in _ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, IndexError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path!r} is not a readable moejax model file (corrupted, truncated "
                         f"or another kind of .npz; {type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a moejax model file.")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} uses model format {version!r}, written by moejax "
            f"{meta.get('moejax_version')}; this moejax reads formats up to {FORMAT_VERSION}. "
            "Upgrade moejax to load it.")
    g = meta.get("nonlinearity")
    if isinstance(g, str) and g and g not in nonlinearity_names():
        raise ValueError(f"{path!r} uses the non-linearity {g!r}, which is not registered in "
                         f"this process: call moejax.register_nonlinearity({g!r}, fn) first.")
    problem = _problem(meta, arrays)
    if problem:
        raise ValueError(f"{path!r} is corrupted: {problem}.")
    names = meta.get("feature_names")
    names = (default_feature_names(arrays["experts"].shape[1] - 1) if names is None
             else tuple(names))
    return FittedMoE(
        MoEParams(arrays["experts"], arrays["gating"], arrays["noise_std"], meta["nonlinearity"]),
        Standardizer(arrays["x_mean"], arrays["x_map"], arrays["y_mean"], arrays["y_scale"]),
        names, meta.get("target_name"))

"""Saving and loading fitted models: one portable .npz holding the parameters, the
preprocessing, the non-linearity, the column names, the moejax version, and what the fit
reported: the refinement's `FitReport`, k selection's `KSelection` and the training statistics
behind standard errors (`Inference`). Format 1 files (parameters only) still load."""

import json
import os
import zipfile

import numpy as np

from moejax import _validate, inference
from moejax import prior as prior_lib
from moejax._version import __version__
from moejax._files import atomic_write
from moejax.fitted import FittedMoE, _default_names
from moejax.refinement import FitReport
from moejax.families import family_names, get_family
from moejax.nonlinearities import nonlinearity_names
from moejax.params import MoEParams
from moejax.preprocessing import Columns, Standardizer
from moejax.prior import Prior
from moejax.selection import KSelection

FORMAT = "moejax-model"
FORMAT_VERSION = 3
# What a fit reported, each part stored field by field as "part.field" (format 2; absent
# parts load as None).
_PARTS = {"report": FitReport, "selection": KSelection, "inference": inference.Inference}
_ARRAYS = {
    "experts": ("params", "experts"),
    "gating": ("params", "gating"),
    "noise_std": ("params", "noise_std"),
    "x_mean": ("standardizer", "x_mean"),
    "x_map": ("standardizer", "x_map"),
    "y_mean": ("standardizer", "y_mean"),
    "y_scale": ("standardizer", "y_scale"),
}
# A gate on columns of its own (format 3): its standardisation, present only then.
_GATE_ARRAYS = {"gate_mean": ("standardizer", "gate_mean"),
                "gate_map": ("standardizer", "gate_map")}


def default_feature_names(dim: int) -> tuple[str, ...]:
    """The names a model without feature names is saved with: x1, ..., xd.

    Args:
      dim: d.

    Returns:
      A tuple of d names.

    Raises:
      Nothing.

    >>> default_feature_names(3)
    ('x1', 'x2', 'x3')
    """
    return _default_names(dim)


def save(path: str | bytes | os.PathLike, fitted: FittedMoE) -> None:
    """Writes `fitted` to `path` (.npz) atomically (see `atomic_write`).

    A model without feature names is saved with `default_feature_names`, so that the command
    line can match it to a table's columns.

    Args:
      path: the file to write (str, bytes or os.PathLike); an existing file is replaced
        only once the new one is complete, a symbolic link is written through.
      fitted: the model (`moejax.fit`'s result, or one built by hand).

    Returns:
      None.

    Raises:
      ValueError: and writes nothing, for a model that `load` would refuse (inconsistent
        shapes, non-finite values, sigma or the target scale not positive, an unknown
        non-linearity, names that do not fit), or a path that is a directory, FIFO, socket
        or device; and when called under jit or vmap.
      OSError: for a missing directory (FileNotFoundError, naming it) or one not writable.

    >>> import os, tempfile, jax.numpy as jnp
    >>> from moejax.preprocessing import fit_standardizer
    >>> x, y = np.random.default_rng(0).normal(size=(50, 2)), np.arange(50.0)
    >>> params = MoEParams(jnp.ones((2, 3)), jnp.zeros((2, 3)), jnp.asarray(0.5), "tanh")
    >>> model = FittedMoE(params, fit_standardizer(x, y))  # normally from moejax.fit
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> save(path, model)
    >>> loaded = load(path)
    >>> loaded.nonlinearity, loaded.feature_names
    ('tanh', ('x1', 'x2'))
    >>> bool(jnp.all(loaded.predict(x) == model.predict(x)))
    True
    """
    if not isinstance(fitted, FittedMoE):
        raise ValueError(f"save writes a FittedMoE (from moejax.fit), got {type(fitted).__name__}.")
    _validate.host_side("moejax.io.save", fitted)
    arrays = {name: np.asarray(getattr(getattr(fitted, part), field))
              for name, (part, field) in _ARRAYS.items()}
    arrays.update({name: np.asarray(getattr(getattr(fitted, part), field))
                   for name, (part, field) in _GATE_ARRAYS.items()
                   if getattr(getattr(fitted, part), field) is not None})
    names = fitted.feature_names
    if names is None and arrays["experts"].ndim == 2:
        names = default_feature_names(fitted.dim)
    columns = fitted.columns
    meta = dict(format=FORMAT, format_version=FORMAT_VERSION, moejax_version=__version__,
                nonlinearity=fitted.nonlinearity, family=get_family(fitted.params.family).name,
                feature_names=None if names is None else list(names),
                target_name=fitted.target_name, noise_learned=bool(fitted.noise_learned),
                prior=None if fitted.prior is None else fitted.prior._asdict(),
                target_range=None if fitted.target_range is None else list(fitted.target_range),
                columns=None if columns is None else dict(
                    experts=list(columns.experts),
                    gate=None if columns.gate is None else list(columns.gate)))
    for part in _PARTS:
        value = getattr(fitted, part)
        if value is not None:
            arrays.update({f"{part}.{field}": np.asarray(v)
                           for field, v in value._asdict().items() if v is not None})
    problem = _problem(meta, arrays)
    if problem:
        raise ValueError(f"cannot save this model: {problem}.")

    def write(f):
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    atomic_write(path, write, binary=True)


def _problem(meta: dict, arrays: dict) -> str | None:
    """What makes (meta, arrays) an invalid model, or None: the checks `save` and `load` share."""
    plain = {**_ARRAYS, **_GATE_ARRAYS}
    if any(np.asarray(a).dtype.kind not in ("fi" if name in plain else "fib")
           for name, a in arrays.items()):
        return "its arrays must hold real numbers"
    experts = arrays["experts"]
    k, d1 = experts.shape if experts.ndim == 2 else (0, 0)
    columns, problem = _columns(meta, d1 - 1)
    if problem:
        return problem
    # sigma: one shared, or one per expert.
    sigma_shape = () if arrays["noise_std"].shape == () else (k,)
    gate_dim = d1 - 1 if columns is None or columns.gate is None else len(columns.gate)
    shapes = dict(experts=(k, d1), gating=(k, gate_dim + 1), noise_std=sigma_shape,
                  x_mean=(d1 - 1,), x_map=(d1 - 1, d1 - 1), y_mean=(), y_scale=())
    if columns is not None and columns.gate is not None:
        shapes.update(gate_mean=(gate_dim,), gate_map=(gate_dim, gate_dim))
    elif set(_GATE_ARRAYS) & set(arrays):
        return "it holds a gate standardisation without gate columns"
    missing = [n for n in shapes if n not in arrays]
    if missing:
        return f"it lacks the arrays {missing}"
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
    family = meta.get("family", "gaussian")  # files before the family registry: Gaussian
    if not isinstance(family, str) or family not in family_names():
        return f"unknown family {family!r} (a name in {family_names()} is needed)"
    names = meta.get("feature_names")
    dim = d1 - 1 if columns is None else columns.num_features
    if names is not None and (not isinstance(names, list) or len(names) != dim
                              or not all(isinstance(v, str) and v for v in names)
                              or len(set(names)) != len(names)):
        return f"feature_names must be {dim} distinct non-empty strings, got {names!r}"
    target = meta.get("target_name")
    if target is not None and not isinstance(target, str):
        return f"target_name must be a string, got {target!r}"
    if not isinstance(meta.get("noise_learned", True), bool):
        return f"noise_learned must be true or false, got {meta['noise_learned']!r}"
    span = meta.get("target_range")  # absent in files before it was kept
    if span is not None and not (
            isinstance(span, list) and len(span) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in span)
            and np.all(np.isfinite(span)) and span[0] <= span[1]):
        return f"target_range must be null or [min, max] of finite numbers, got {span!r}"
    prior = meta.get("prior")
    if prior is not None:
        try:
            if not isinstance(prior, dict):
                raise ValueError
            prior_lib.check(Prior(**prior))
        except (TypeError, ValueError):
            return f"prior must be null or the fields of a moejax.Prior, got {prior!r}"
    for part, cls in _PARTS.items():
        # Fields with a default were added later: files without them still load.
        required = [f for f in cls._fields if f not in cls._field_defaults]
        present = [f for f in cls._fields if f"{part}.{f}" in arrays]
        if present and not set(required) <= set(present):
            return f"the {part} lacks fields {sorted(set(required) - set(present))}"
    if "inference.information" in arrays:
        p = inference.num_params(MoEParams(experts, arrays["gating"], arrays["noise_std"]),
                                 meta.get("noise_learned", True))
        shapes = dict(information=(p, p), outer=(p, p), score=(p,), mixing_weights=(k,))
        wrong = [f for f, shape in shapes.items() if arrays[f"inference.{f}"].shape != shape]
        if wrong:
            return f"the training statistics {wrong} do not fit {p} parameters"
    return None


def _columns(meta: dict, dim: int):
    """(the model's `Columns` or None, a problem or None) from meta's "columns": null, or
    {"experts": [...], "gate": [...] or null}, indices into x's columns, whose number is the
    length of feature_names (saved with every model that has columns)."""
    value = meta.get("columns")
    if value is None:
        return None, None
    names = meta.get("feature_names")
    index = lambda v: isinstance(v, list) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in v) and len(set(v)) == len(v)
    if (not isinstance(value, dict) or set(value) != {"experts", "gate"}
            or not isinstance(names, list) or not index(value["experts"])
            or len(value["experts"]) != dim
            or not (value["gate"] is None or index(value["gate"]))
            or not all(0 <= i < len(names) for i in value["experts"] + (value["gate"] or []))):
        return None, (f"columns must be null or {{experts, gate}} lists of {dim} and any number "
                      f"of distinct column positions, got {value!r}")
    gate = None if value["gate"] is None else tuple(value["gate"])
    return Columns(len(names), tuple(value["experts"]), gate), None


def load(path: str | bytes | os.PathLike) -> FittedMoE:
    """Reads a model written by `save`. Example: `save`'s example writes a model and loads
    it back.

    Args:
      path: the file (str, bytes or os.PathLike).

    Returns:
      The `FittedMoE`, with its feature and target names, report, selection, inference and
      prior as saved.

    Raises:
      FileNotFoundError: if `path` does not exist.
      ValueError: for anything else that is not a valid model: a directory, another kind of
        file, a truncated or corrupted model, inconsistent contents, or a format written by a
        newer moejax than this one can read.
    """
    path = os.fsdecode(os.fspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a moejax model file.")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a regular file (a FIFO, socket or device), not a "
                         "moejax model file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r} does not exist.")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"model file {path!r} cannot be read (permission denied).")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path!r} is not a readable moejax model file (not an .npz archive).")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"][()]))
            arrays = {name: np.array(data[name]) for name in _ARRAYS}
            arrays.update({name: np.array(data[name]) for name in data.files
                           if name.split(".")[0] in _PARTS or name in _GATE_ARRAYS})
    except (OSError, ValueError, KeyError, EOFError, IndexError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path!r} is not a readable moejax model file (corrupted, truncated "
                         f"or another kind of .npz; {type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a moejax model file.")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path!r} is corrupted: its format_version is {version!r}, not a "
                         "positive integer (moejax writes integers; the file was edited or "
                         "damaged).")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} uses model format {version!r}, written by moejax "
            f"{meta.get('moejax_version')}; this moejax reads formats up to {FORMAT_VERSION}. "
            "Upgrade moejax to load it.")
    g = meta.get("nonlinearity")
    if isinstance(g, str) and g and g not in nonlinearity_names():
        raise ValueError(f"{path!r} uses the non-linearity {g!r}, which is not registered in "
                         f"this process: call moejax.register_nonlinearity({g!r}, fn) first "
                         "(on the command line: --import=MODULE, a module that registers it).")
    problem = _problem(meta, arrays)
    if problem:
        raise ValueError(f"{path!r} is corrupted: {problem}.")
    names = meta.get("feature_names")
    names = (default_feature_names(arrays["experts"].shape[1] - 1) if names is None
             else tuple(names))
    columns = _columns(meta, arrays["experts"].shape[1] - 1)[0]
    gate = {name: arrays[name] for name in _GATE_ARRAYS if name in arrays}
    parts = {}
    for part, cls in _PARTS.items():
        if f"{part}.{cls._fields[0]}" in arrays:
            fields = {f: arrays[f"{part}.{f}"] for f in cls._fields if f"{part}.{f}" in arrays}
            if cls is KSelection:  # the chosen k are Python integers
                fields.update(best_bic=int(fields["best_bic"]), best_cv=int(fields["best_cv"]))
            parts[part] = cls(**fields)
    return FittedMoE(
        MoEParams(arrays["experts"], arrays["gating"], arrays["noise_std"], meta["nonlinearity"],
                  meta.get("family", "gaussian")),
        Standardizer(arrays["x_mean"], arrays["x_map"], arrays["y_mean"], arrays["y_scale"],
                     **gate),
        names, meta.get("target_name"), noise_learned=meta.get("noise_learned", True),
        prior=None if meta.get("prior") is None else prior_lib.check(Prior(**meta["prior"])),
        target_range=None if meta.get("target_range") is None else tuple(
            float(v) for v in meta["target_range"]),
        columns=columns, **parts)

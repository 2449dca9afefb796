r"""Command line: fit an MoE to a CSV/TSV table, and predict with a saved model.

    python -m moejax fit --data=train.csv --target=y --experts=3 --out=model.npz
    python -m moejax summary --model=model.npz
    python -m moejax predict --model=model.npz --data=test.csv --out=predictions.csv \
        --interval=0.9 --posteriors
    python -m moejax plot --model=model.npz --data=train.csv --out=fit.png

Files ending in .tsv or .tab are tab-separated, all others comma-separated (or pass
--delimiter); the first line names the columns. Bad input ends with a one-line message and exit
status 1; nothing is written unless the command succeeds, and --out may not name the input
table or model.
"""

import contextlib
import csv
import dataclasses
import functools
import importlib
import logging
import math
import os
import shutil
import sys
import tempfile
import warnings

from absl import app, flags
import jax
import numpy as np

from moejax import _files, compilation, estimator, io, plot, program_cache, refinement
from moejax.config import FitConfig
from moejax._version import __version__
from moejax.nonlinearities import NONLINEARITIES
from moejax import DataError
from moejax.prior import Prior
from moejax.tables import NA_VALUES, TableError, read_header, read_table

COMMANDS = ("fit", "predict", "summary", "plot")
# fit's settings with a flag of the same name (its default is FitConfig's); --experts and
# --prior are read into num_experts and prior.
FIT_SETTINGS = ("family", "nonlinearity", "noise_std", "whiten", "num_refine_iters",
                "num_refine_inits", "per_expert_noise", "max_experts", "select_by", "chunk_size")
_DEFAULT = {field.name: field.default for field in dataclasses.fields(FitConfig)}

_DATA = flags.DEFINE_string("data", None, "Input table (.csv, or .tsv for tab-separated; - "
                            "reads standard input).")
_TARGET = flags.DEFINE_string("target", None, "fit: name of the target column.")
_EXPERTS = flags.DEFINE_string("experts", None, "fit: number of experts k (1 is least squares; "
                               "above the number of features d, from random starts only), or "
                               "'auto' to choose k in 1..--max_experts (at most what the rows "
                               "support).")
flags.DEFINE_integer(
    "max_experts", _DEFAULT["max_experts"], "fit: the largest k that --experts=auto tries.")
_SELECT_BY = flags.DEFINE_enum(
    "select_by", _DEFAULT["select_by"], ["bic", "cv"], "fit: how --experts=auto chooses k: "
    "BIC, or 5-fold cross-validated log-likelihood.")
flags.DEFINE_integer(
    "num_refine_inits", _DEFAULT["num_refine_inits"], "fit: random starts of the refinement "
    "besides the moment start.")
flags.DEFINE_integer(
    "chunk_size", _DEFAULT["chunk_size"], "fit: rows per block of every pass over the data "
    "(bounds memory on large tables; default: all rows at once).")
flags.DEFINE_string(
    "family", _DEFAULT["family"], "fit: the target's distribution given an expert: gaussian, "
    "binomial (a 0/1 target, logit link) or poisson (a count, log link).")
_NONLIN = flags.DEFINE_string(
    "nonlinearity", _DEFAULT["nonlinearity"], "fit: the experts' non-linearity g: one of "
    f"{', '.join(NONLINEARITIES)}, or a name registered by an --import module (default: the "
    "family's, linear for gaussian).")
flags.DEFINE_float(
    "noise_std", _DEFAULT["noise_std"], "fit: known noise sd in target units (default: "
    "estimated).")
flags.DEFINE_bool(
    "per_expert_noise", _DEFAULT["per_expert_noise"], "fit: learn one noise sd per expert "
    "(else one shared by all).")
flags.DEFINE_integer(
    "num_refine_iters", _DEFAULT["num_refine_iters"], "fit: cap on joint-EM refinement "
    "iterations (0 skips it).")
# The 0.1 name, kept for one version (moejax/_renamed.py).
flags.DEFINE_alias("refine_iters", "num_refine_iters")
flags.DEFINE_bool(
    "whiten", _DEFAULT["whiten"], "fit: whiten the features (else only standardise).")
_PRIOR = flags.DEFINE_bool("prior", True, "fit: the regularised fit with moejax.Prior()'s "
                           "default strengths (--noprior: maximum likelihood).")
_SEED = flags.DEFINE_integer("seed", 0, "fit: PRNG seed.")
_MODEL = flags.DEFINE_string("model", None, "predict, summary, plot: a model written by `fit`.")
_FEATURE = flags.DEFINE_string("feature", None, "plot: the feature along which the experts and "
                               "the gate are drawn (default: the one the gate depends on most).")
_INTERVAL = flags.DEFINE_float("interval", None, "predict: also write the central predictive "
                               "interval of this level, e.g. 0.9 (columns lower, upper).")
_POSTERIORS = flags.DEFINE_bool("posteriors", False, "predict: also write each row's gate "
                                "probabilities p_1..p_k and, when the table holds the target, "
                                "its posteriors q_1..q_k and cluster (1-based).")
_OUT = flags.DEFINE_string("out", None, "fit: model file to write (.npz); predict: CSV to write "
                           "(- writes standard output, and the report goes to standard error); "
                           "plot: the PNG to write.")
_DELIM = flags.DEFINE_string("delimiter", None, "Column separator of --data (default: tab for "
                             ".tsv/.tab files, else comma).")
_CACHE = flags.DEFINE_string(
    "cache_dir", None, "Where compiled XLA programs are kept between runs, so that a second fit "
    "or predict of the same table shape skips compilation (default: $MOEJAX_CACHE_DIR, else "
    "$XDG_CACHE_HOME/moejax or ~/.cache/moejax; '' turns the cache off).")
_DROP = flags.DEFINE_bool("drop_missing", False, "Drop rows with missing (see --na_values) or "
                          "infinite cells instead of failing on them.")
_NA = flags.DEFINE_list("na_values", list(NA_VALUES), "Cells that mean a missing value "
                        "(comma-separated; an empty cell is always missing).")
_IMPORT = flags.DEFINE_list("import", [], "Python modules to import first (comma-separated; "
                            "looked up on PYTHONPATH and in the current directory), e.g. one "
                            "that calls moejax.register_nonlinearity for a model's g.")
_FEATURES = flags.DEFINE_list("features", None, "fit: the experts' feature columns (default: "
                              "every column but --target, --exclude and --gate's).")
_GATE = flags.DEFINE_list("gate", None, "fit: the gate's own columns (concomitant variables; "
                          "they may overlap --features), or --gate= for constant mixing "
                          "weights (a mixture of regressions); default: the experts' columns.")
_EXCLUDE = flags.DEFINE_list("exclude", [], "fit: columns to leave out (e.g. an id or a text "
                             "column).")


class InputError(Exception):
    """Bad input; the message is shown to the user without a traceback."""


def _require(**values):
    missing = [f"--{name}" for name, v in values.items() if v is None]
    if missing:
        raise InputError(f"missing required flag(s): {', '.join(missing)}.")


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_out(out: str, stdout_ok: bool = False, **inputs: str) -> None:
    """Raises InputError, before any work, if `out` could not be written or names an input;
    "-" (standard output, where the command can write it: `stdout_ok`) passes."""
    if out == "-":
        return
    for flag, path in inputs.items():
        if path is not None and _same_file(out, path):
            raise InputError(f"--out {out!r} is the same file as --{flag}; writing it would "
                             f"destroy the {flag}. Choose another --out.")
    directory = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise InputError(f"--out {out!r} is a directory; give a file name.")
    if os.path.exists(out) and not os.path.isfile(out):  # /dev/stdout, a FIFO, a device
        raise InputError(f"--out {out!r} is not a regular file (a pipe, FIFO, terminal or "
                         "device): moejax writes a whole file and renames it into place. "
                         "Give a file name" + (", or --out=- for standard output"
                                               if stdout_ok else "") + ".")
    if not os.path.isdir(directory):
        raise InputError(f"--out: directory {directory!r} does not exist.")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(f"--out: cannot write in directory {directory!r} (permission denied).")
    if os.path.exists(out) and not os.access(out, os.W_OK):
        raise InputError(f"--out {out!r} exists and is read-only.")


@contextlib.contextmanager
def _rows_of(path: str, lines, target: str | None = None):
    """Turns the library's DataError about rows of the table at `path` (read from its
    `lines`) into an InputError naming the file, its lines and its columns."""
    try:
        yield
    except DataError as e:
        subject = (_as_given(repr(path), path) if e.argument == "x" else
                   f"the target column {target!r}")
        raise InputError(str(e.named(subject=subject, row_label=lambda i: f"line {int(lines[i])}"))
                         ) from None


def read_data(path: str, columns=None):
    """read_table of the table at `path` (--data, or the copy of standard input), only
    `columns` if given, with the table flags."""
    try:
        return read_table(path, drop_missing=_DROP.value, delimiter=_DELIM.value,
                          na_values=[""] + _NA.value, columns=columns)
    except TableError as e:
        raise TableError(_as_given(str(e), path)) from None


def _as_given(message: str, path: str) -> str:
    """A message about `path` as the user named it: standard input for --data=-, the FIFO's
    name for the copy of one."""
    if path == _DATA.value:
        return message
    return message.replace(repr(path), "standard input" if _DATA.value == "-" else
                           repr(_DATA.value))


def _fit_config(k) -> FitConfig:
    """The flags' fit settings, checked by the library; InputError naming the flag."""
    settings = {name: flags.FLAGS[name].value for name in FIT_SETTINGS}
    try:
        return FitConfig.of(None, dict(settings, num_experts=k,
                                       prior=Prior() if _PRIOR.value else None))
    except ValueError as e:  # the library's message begins with the setting's name
        raise InputError(f"--{e}") from None


def _fit(x, y, config: FitConfig, feature_names, roles=(None, None)):
    """`estimator.fit` with the flags' settings; roles: (expert_columns, gate_columns)."""
    return estimator.fit(jax.random.key(_SEED.value), x, y, config,
                         feature_names=feature_names, target_name=_TARGET.value,
                         expert_columns=roles[0], gate_columns=roles[1],
                         progress=lambda m: print("  " + m, flush=True))


def fit_columns(path: str) -> list[str]:
    """The feature columns fit reads: --features, else every column but --target and
    --exclude; InputError naming the flag for a column the table lacks."""
    names = read_header(path, delimiter=_DELIM.value)
    for flag, wanted in (("target", [_TARGET.value]), ("features", _FEATURES.value or []),
                         ("exclude", _EXCLUDE.value), ("gate", _GATE.value or [])):
        absent = [c for c in wanted if c not in names]
        if absent:
            what = f"column {absent[0]!r} is" if len(absent) == 1 else f"columns {absent} are"
            raise InputError(f"--{flag}: {what} not in {_DATA.value!r}; its columns are "
                             f"{names}.")
    for flag, wanted in (("features", _FEATURES.value or []), ("gate", _GATE.value or [])):
        if _TARGET.value in wanted:
            raise InputError(f"--{flag} names the target column {_TARGET.value!r}.")
    features = _FEATURES.value or [c for c in names if c != _TARGET.value
                                   and c not in (_GATE.value or [])]
    return [c for c in features if c not in _EXCLUDE.value]


def fit_command(path: str) -> None:
    _require(data=_DATA.value, target=_TARGET.value, experts=_EXPERTS.value, out=_OUT.value)
    if _OUT.value == "-":
        raise InputError("--out=-: a model is a binary .npz file; give a file name.")
    check_out(_OUT.value, data=_DATA.value)
    _fit_config(1)  # the settings checked before the table is read
    experts = fit_columns(path)
    gate = _GATE.value
    # x holds the experts' columns, then the gate's own that the experts do not read.
    feature_names = tuple(experts + [c for c in gate or () if c not in experts])
    table, _, lines = read_data(path, list(feature_names) + [_TARGET.value])
    x, y = table[:, :-1], table[:, -1]
    n, d = x.shape
    k = _EXPERTS.value.strip()
    if k != "auto":
        if not (k.isascii() and k.isdigit()):  # its range is the library's to check
            raise InputError(f"--experts must be 'auto' or a positive integer (the number of "
                             f"experts), got {k!r}.")
        k = int(k)
    if not -2**63 <= _SEED.value < 2**63:
        raise InputError(f"--seed must fit in 64 bits (|seed| < 2^63), got {_SEED.value}.")
    config = _fit_config(k)
    kind = (config.family if config.family != "gaussian" else config.nonlinearity)
    print(f"fitting {k} {kind} experts to {n} rows, {d} features, target "
          f"{_TARGET.value!r}", flush=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _rows_of(path, lines, _TARGET.value):  # the library checks the cells
            try:
                model = _fit(x, y, config, feature_names,
                             (None if gate is None else experts, gate))
            except ValueError as e:  # k's range is the library's check; --experts is the flag
                if not str(e).startswith("num_experts "):
                    raise
                raise InputError(f"--experts{str(e).removeprefix('num_experts')}") from None
    for w in caught:
        sys.stderr.write(f"moejax fit: warning: {w.message}\n")
    mse = float(np.mean(np.square(np.asarray(model.predict(x)) - y)))
    # The training statistics hold the likelihood and the mixing weights already (float64):
    # no program of their own to compile on a first run.
    stats = None if model.inference is None else jax.device_get(model.inference)
    nll = (-float(model.log_likelihood(x, y)) if stats is None
           else -float(stats.log_likelihood) / n)
    if not (math.isfinite(mse) and math.isfinite(nll)):
        raise InputError("the fit diverged (non-finite training error); nothing was written.")
    mixing = model.mixing_weights(x) if stats is None else stats.mixing_weights
    weights = ", ".join(f"{v:.3f}" for v in np.asarray(mixing))
    if model.report is not None:
        r = jax.device_get(model.report)  # on the host: indexing would compile programs
        best = int(r.best)
        start = refinement.start_name(best, model.moment_start)
        state = ("converged" if bool(r.converged[best])
                 else "NOT converged (raise --num_refine_iters)")
        print(f"kept {start} of {len(r.converged)}: {int(r.num_iters[best])} iterations, "
              f"{state}; {int(np.sum(r.continued))} of {len(r.converged)} starts kept after "
              "screening")
    if model.selection is not None:
        print(f"chose k = {model.num_experts} by "
              f"{'BIC' if _SELECT_BY.value == 'bic' else 'cross-validation'}:")
        print(model.selection.table())
    print(f"mixing weights: {weights}")
    if model.noise_learned or config.noise_std is not None:  # a binomial or Poisson has none
        print("noise sd: " + ", ".join(f"{v:.4g}"
                                       for v in np.atleast_1d(np.asarray(model.noise_std))))
    print(f"training NLL: {nll:.4f} per row")
    print(f"training MSE: {mse:.4g}")
    io.save(_OUT.value, model)
    print(f"wrote {_OUT.value}")


def _load_model():
    try:
        return io.load(_MODEL.value)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"--model: {e}") from None


def summary_command() -> None:
    _require(model=_MODEL.value)
    print(_load_model().summary())


def plot_command(path: str) -> None:
    """The model's overview figure (`moejax.plot.overview`) on the rows of --data, which
    must hold the model's features and its target."""
    _require(model=_MODEL.value, data=_DATA.value, out=_OUT.value)
    if _OUT.value == "-":
        raise InputError("--out=-: a plot is a PNG file; give a file name.")
    check_out(_OUT.value, data=_DATA.value, model=_MODEL.value)
    try:
        import matplotlib
    except ImportError:
        raise InputError("plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # a file, no display

    model = _load_model()
    names = read_header(path, delimiter=_DELIM.value)
    wanted = list(model.feature_names or ()) + [model.target_name]
    absent = [c for c in wanted if c not in names]
    if model.feature_names is None or model.target_name is None or absent:
        raise InputError(f"{_DATA.value!r} must hold the model's features and target "
                         f"{wanted}; it lacks {absent} (it has {names}).")
    table, _, lines = read_data(path, wanted)
    x, y = table[:, :-1], table[:, -1]
    feature = _FEATURE.value
    if feature is not None and feature not in model.feature_names:
        raise InputError(f"--feature must be one of the model's features "
                         f"{list(model.feature_names)}, got {feature!r}.")
    with _rows_of(path, lines, model.target_name):
        figure = plot.overview(model, x, y, feature)
    _files.atomic_write(_OUT.value, lambda f: figure.savefig(f, format="png", dpi=110),
                        binary=True)
    print(f"wrote {_OUT.value} ({len(lines)} rows, {model.num_experts} experts)")


def _known_target(path: str, name: str, lines) -> np.ndarray | None:
    """The target column on the rows `lines`, when every one of them holds a number (then
    the report scores the predictions); else None, with a note on stderr: unknown targets
    ('?', NA, text) do not stop a prediction."""
    try:
        y, _, y_lines = read_table(path, delimiter=_DELIM.value, columns=[name],
                                   na_values=[""] + _NA.value, drop_missing=True,
                                   log=lambda message: None)
    except TableError:
        y, y_lines = None, ()
    if y is None or not np.isin(lines, y_lines).all():
        sys.stderr.write(f"moejax predict: note: column {name!r} is not a number on every row; "
                         "the predictions are not scored against it.\n")
        return None
    return y[np.searchsorted(y_lines, lines), 0]


def predict_command(path: str) -> None:
    _require(model=_MODEL.value, data=_DATA.value, out=_OUT.value)
    check_out(_OUT.value, stdout_ok=True, data=_DATA.value, model=_MODEL.value)
    level = _INTERVAL.value
    if level is not None and not 0 < level < 1:
        raise InputError(f"--interval must be a level in (0, 1), e.g. 0.9; got {level}.")
    model = _load_model()
    names = read_header(path, delimiter=_DELIM.value)
    wanted = list(model.feature_names or ())
    absent = [c for c in wanted if c not in names]
    if absent or len(wanted) != model.dim:
        raise InputError(f"{_DATA.value!r} does not match the model: the model was fitted on "
                         f"columns {wanted}; the data lack {absent} (it has {names}).")
    # Only the model's columns are read: others (an id, text) do not matter.
    x, _, lines = read_data(path, wanted)
    y = _known_target(path, model.target_name, lines) if model.target_name in names else None
    header = ["line", f"predicted_{model.target_name or 'y'}"]
    with _rows_of(path, lines):  # the library checks the cells
        columns = [np.asarray(model.predict(x), dtype=np.float64)]
    if level is not None:
        # repr: the level as given (0.999999999, not 1 as :g would write it).
        header += [f"lower_{level!r}", f"upper_{level!r}"]
        columns += [np.asarray(v, np.float64) for v in model.predict_interval(x, level)]
    if _POSTERIORS.value:
        k = model.num_experts
        header += [f"p_{i + 1}" for i in range(k)]
        columns += list(np.asarray(model.gate_probabilities(x), np.float64).T)
        if y is not None:
            post = np.asarray(model.posteriors(x, y), np.float64)
            header += [f"q_{i + 1}" for i in range(k)] + ["cluster"]
            columns += list(post.T) + [np.argmax(post, axis=1) + 1]

    def write(f):
        writer = csv.writer(f)
        writer.writerow(header)
        for i, line in enumerate(lines):
            writer.writerow([int(line)] + [repr(float(c[i])) if c.dtype.kind == "f"
                                           else int(c[i]) for c in columns])

    if _OUT.value == "-":
        write(sys.stdout)
        sys.stdout.flush()
        report = functools.partial(print, file=sys.stderr)  # standard output holds the table
    else:
        _files.atomic_write(_OUT.value, write)
        report = print
    report(f"wrote {len(lines)} predictions to "
           + ("standard output" if _OUT.value == "-" else _OUT.value))
    if y is not None:
        pred = columns[0]
        report(f"MSE against column {model.target_name!r}: "
              f"{float(np.mean(np.square(pred - y))):.4g}; "
              f"NLL: {-float(model.log_likelihood(x, y)):.4f} per row")
        if level is not None:
            inside = np.mean((columns[1] <= y) & (y <= columns[2]))
            report(f"{level:g} intervals: {100 * inside:.1f}% of rows inside, mean width "
                  f"{float(np.mean(columns[2] - columns[1])):.4g}")


def cache_dir() -> str:
    """The --cache_dir in effect: the flag, else `compilation.default_cache_dir()`."""
    return _CACHE.value if _CACHE.value is not None else compilation.default_cache_dir()


def _enable_compilation_cache() -> None:
    """JAX's persistent compilation cache: most of a small fit's time is compilation."""
    if cache_dir():
        compilation.enable_compilation_cache(cache_dir())


def _guarded(run, name: str) -> None:
    """run() with the compilation cache guarded as the library guards it
    (`program_cache.guarded`: a damaged entry deleted, or the cache emptied and the command
    run again), every warning one line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            program_cache.guarded(run)
        finally:
            for w in caught:
                sys.stderr.write(f"moejax {name}: warning: {w.message}\n")


def main(argv) -> None:
    # JAX logs at INFO that it found no TPU; that is noise on every run.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    if len(argv) != 2 or argv[1] not in COMMANDS:
        sys.stderr.write(f"usage: python -m moejax {{{','.join(COMMANDS)}}} --flag=value ...\n"
                         f"  (got {argv[1:]}; see --help for the flags)\n")
        sys.exit(2)
    if flags.FLAGS["refine_iters"].present:
        # An alias: absl keeps whichever came last, so both names at once is refused.
        given = {a.split("=")[0].lstrip("-") for a in sys.argv[1:] if a.startswith("--")}
        if "num_refine_iters" in given:
            sys.stderr.write(f"moejax {argv[1]}: error: --refine_iters is the old name of "
                             "--num_refine_iters; pass only --num_refine_iters.\n")
            sys.exit(1)
        sys.stderr.write("moejax: warning: --refine_iters is now called --num_refine_iters; the "
                         "old name will be removed in moejax 0.3.\n")
    try:
        import_modules(_IMPORT.value)
    except InputError as e:
        sys.stderr.write(f"moejax {argv[1]}: error: {e}\n")
        sys.exit(1)
    _enable_compilation_cache()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = _DATA.value
            # Standard input, a FIFO or a process substitution (<(zcat t.csv.gz)) can be read
            # once: into a file, which the command reads as often as it needs.
            stream = path is not None and path != "-" and os.path.exists(path) and not (
                os.path.isfile(path) or os.path.isdir(path))
            if (path == "-" or stream) and argv[1] != "summary":
                suffix = os.path.splitext(path)[1] if stream else ".csv"
                path = os.path.join(tmp, "stdin" + suffix)
                with open(path, "wb") as f, (open(_DATA.value, "rb") if stream
                                             else contextlib.nullcontext(sys.stdin.buffer)) as s:
                    shutil.copyfileobj(s, f)
            command = dict(fit=fit_command, predict=predict_command, plot=plot_command,
                           summary=lambda path: summary_command())[argv[1]]
            _guarded(lambda: command(path), argv[1])
        except (InputError, ValueError, OSError) as e:
            # ValueError: the library's checks (shapes, finiteness, sizes) speak for themselves.
            sys.stderr.write(f"moejax {argv[1]}: error: {_as_given(str(e), path)}\n")
            sys.exit(1)


def import_modules(names) -> None:
    """Imports each module of --import (for the non-linearities they register), the current
    directory first on the path as for `python -m`; InputError naming the module that fails."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise InputError(f"--import={name}: {e} (the module must be on PYTHONPATH or in "
                             "the current directory).") from None
        except Exception as e:  # the module's own error, whatever it is: say where it came from
            raise InputError(f"--import={name}: importing it raised {type(e).__name__}: "
                             f"{e}") from None


# The flags each command reads (besides the shared table flags), for its --help.
COMMAND_FLAGS = dict(
    fit=["data", "target", "features", "exclude", "gate", "experts", "out", "family",
         "nonlinearity", "noise_std", "per_expert_noise", "num_refine_iters",
         "num_refine_inits", "max_experts", "select_by", "chunk_size", "whiten", "prior",
         "seed"],
    predict=["model", "data", "out", "interval", "posteriors"],
    summary=["model"],
    plot=["model", "data", "out", "feature"])
_TABLE_FLAGS = ["delimiter", "na_values", "drop_missing", "cache_dir"]
_SHARED_FLAGS = ["import"]


def usage(command: str | None) -> str:
    """The help text: the commands, or one command's flags with their defaults."""
    lines = ["\n\n".join(__doc__.strip().split("\n\n")[:2]), ""]
    if command is None:
        lines += [f"commands: {', '.join(COMMANDS)}; `python -m moejax COMMAND --help` lists "
                  "a command's flags. --version prints the version."]
        return "\n".join(lines) + "\n"
    names = (COMMAND_FLAGS[command] + (_TABLE_FLAGS if command != "summary" else [])
             + _SHARED_FLAGS)
    lines.append(f"python -m moejax {command} flags:")
    for name in names:
        flag = flags.FLAGS[name]
        default = "" if flag.default is None else f" (default: {flag.default})"
        lines.append(f"  --{name}: {flag.help}{default}")
    return "\n".join(lines) + "\n"


def run() -> None:
    """The entry point: --help and --version answered before absl parses the flags (exit
    status 0), then the command."""
    args = sys.argv[1:]
    if "--version" in args:
        print(f"moejax {__version__}")
        sys.exit(0)
    if any(a in ("--help", "-h", "--helpshort", "--helpfull", "-?") for a in args):
        sys.stdout.write(usage(next((a for a in args if a in COMMANDS), None)))
        sys.exit(0)
    app.run(main)

"""JAX's persistent compilation cache, set up for moejax: most of a small table's first fit is XLA
compilation, and a cache on disk lets a later process skip it (docs/scale.md)."""

import collections
import functools
import glob
import hashlib
import importlib
import os
import pickle
import re
import shutil
import sys
import tempfile
import traceback

import jax
import jax.numpy as jnp
from jax.experimental.compilation_cache import compilation_cache
import numpy as np

# The persistent cache's subdirectory of exported programs (`cached_call`).
EXPORTS = "moejax-exports"


def default_cache_dir() -> str:
    """$MOEJAX_CACHE_DIR, else $XDG_CACHE_HOME/moejax, else ~/.cache/moejax.

    >>> os.environ["MOEJAX_CACHE_DIR"] = "/tmp/moejax-cache"
    >>> default_cache_dir()
    '/tmp/moejax-cache'
    >>> del os.environ["MOEJAX_CACHE_DIR"]
    """
    if "MOEJAX_CACHE_DIR" in os.environ:
        return os.environ["MOEJAX_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "moejax")


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Keeps every compiled XLA program of this process in a directory on disk, so that a later
    process (a script run again, the command line, a worker of a grid search) loads it instead
    of compiling: the command line's setting, for library users.

    Call it before the first fit: JAX sets its cache up at the first compilation. JAX keys each
    entry by the program, the jax and jaxlib versions, the backend and device kind and the
    compile options, so one directory serves several versions and machines without mixing them
    up. Every program is kept (JAX's default keeps only those that took over a second to
    compile, which leaves out most of a fit's). A fit's two large programs are also kept
    exported (`cached_call`), so that a later process does not even trace them.

    Args:
      path: the directory (created if needed); None for `default_cache_dir()`.

    Returns:
      The directory in use, or None if it could not be created, in which case one line on
      stderr says why and compilation goes on without a cache.

    Raises:
      Nothing: a directory that cannot be used is reported on stderr (see Returns).

    Example (first thing in a script; it changes this process's JAX configuration):

        import moejax as mj
        mj.enable_compilation_cache()       # ~/.cache/moejax, as the command line uses
    """
    path = default_cache_dir() if path is None else os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write in {path!r}")
    except OSError as e:
        sys.stderr.write(f"moejax: warning: no compilation cache ({e}); continuing without.\n")
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def _entries(path: str, function: str | None = None) -> list[str]:
    """The cache's entry files (JAX names them jit_<function>-<key>-cache), all or one
    function's."""
    pattern = f"jit_{glob.escape(function)}-*" if function else "jit_*"
    return glob.glob(os.path.join(glob.escape(path), pattern))


def discard_unreadable(path: str, caught) -> list[str]:
    """Deletes the entries JAX reported it could not read (warnings in `caught`, from
    `warnings.catch_warnings(record=True)`: a truncated or corrupted file), so that the next
    compilation writes them again instead of every later run warning. Those warnings are
    removed from `caught` (the others stay); returns the names of their functions."""
    functions = []
    for w in list(caught):
        found = re.search(r"persistent compilation cache entry for '([^']+)'", str(w.message))
        if found:
            caught.remove(w)
            functions.append(found.group(1).removeprefix("jit_"))
            for entry in _entries(path, found.group(1).removeprefix("jit_")):
                try:
                    os.remove(entry)
                except OSError:
                    pass
    return sorted(set(functions))


def raised_inside_jax(error: BaseException) -> bool:
    """Whether the innermost frame of `error`'s traceback is JAX's own code: an error that a
    damaged cache entry can cause (a program of other shapes loaded under a key), unlike
    moejax's checks of the data."""
    # JAX hides its own frames from tracebacks and keeps the whole one as the cause.
    while error is not None:
        frames = traceback.extract_tb(error.__traceback__)
        if frames and f"{os.sep}jax{os.sep}" in frames[-1].filename:
            return True
        error = error.__cause__
    return False


def drop_cache(path: str) -> None:
    """Empties the cache directory and turns the persistent cache off for this process (the
    in-memory programs are dropped too), so that what runs next compiles afresh."""
    for entry in _entries(path) + [os.path.join(path, EXPORTS)]:
        try:
            os.remove(entry) if os.path.isfile(entry) else shutil.rmtree(entry)
        except OSError:
            pass
    jax.config.update("jax_enable_compilation_cache", False)
    _LOADED.clear()
    compilation_cache.reset_cache()
    jax.clear_caches()


# XLA CPU options per kind of program (docs/scale.md "Compiling once"; measured on airfoil,
# k = 3, jax 0.10.2, 2 cores). "fast_code", for a program that is most of a warm fit's time
# (the fit's): LLVM at -O1 instead of -O3 compiles about 13% less (6.35 s against 7.27 s),
# and its code is no slower. "fast_compile", for a program that runs a few milliseconds per
# fit (the standard errors'): XLA's older loop emitters too, which cut its compilation by
# a quarter to a half (0.96 -> 0.47 s as jitted, 1.1-1.4 -> 0.9-1.0 s as a loaded export)
# for about a millisecond more per fit; on the fit's program they made warm fits 40% slower
# (stop 33 used them there).
COMPILER_OPTIONS = {
    "fast_code": {"xla_backend_optimization_level": 1},
    "fast_compile": {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False},
}


@functools.cache
def compiler_options(kind: str = "fast_code") -> dict | None:
    """`COMPILER_OPTIONS[kind]` where this jax takes them and XLA knows them, on the CPU, else
    None (jax before 0.4.36 has no jit(compiler_options=), older XLA may lack an option, and
    accelerators were not measured); None too with $MOEJAX_COMPILER_OPTIONS=0, XLA's own
    defaults (to compare, or to rule the options out)."""
    if os.environ.get("MOEJAX_COMPILER_OPTIONS") == "0" or jax.default_backend() != "cpu":
        return None
    try:  # ahead of time: this may run while a function is being traced
        jax.jit(lambda a: a + 1, compiler_options=COMPILER_OPTIONS[kind]).lower(
            np.float32(0)).compile()
    except Exception:
        return None
    return COMPILER_OPTIONS[kind]


class jit:  # noqa: N801  (a decorator, named like the jax.jit it stands for)
    """`jax.jit(fn, **kwargs)` with `compiler_options(kind)`, resolved at the first call (so
    that importing moejax starts no backend): the decorator of the programs that `cached_call`
    runs."""

    def __init__(self, fn=None, *, kind: str = "fast_code", **kwargs):
        self.fn, self.kind, self.kwargs, self._jitted = fn, kind, kwargs, None
        if fn is not None:
            functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        if self.fn is None:  # used as @jit(static_argnames=...)
            return jit(args[0], kind=self.kind, **self.kwargs)
        return self.jitted(*args, **kwargs)

    @property
    def jitted(self):
        """The jax.jit function (built once)."""
        if self._jitted is None:
            self._jitted = _jit_with_options(self.fn, self.kind, **self.kwargs)
        return self._jitted


def _jit_with_options(fn, kind: str, **kwargs):
    """jax.jit(fn, **kwargs) with `compiler_options(kind)` when there are any."""
    options = compiler_options(kind)
    return jax.jit(fn, **kwargs, **({} if options is None else {"compiler_options": options}))


def cached_call(jitted, args: tuple, **static):
    """`jitted(*args, **static)`, through an exported program kept in the persistent cache's
    directory when the cache is on (`enable_compilation_cache`, the command line).

    JAX's cache skips XLA's compilation but not the tracing and lowering before it, about 2 s
    of a warm command-line fit. The program exported once (`jax.export`, a serialized StableHLO
    module) is loaded instead in a later process: nothing is traced. An entry is keyed by
    everything that shapes the program: moejax's source, the jax and jaxlib versions, the
    backend, x64, the function, its static arguments and the shapes and dtypes of `args`. An
    entry that cannot be read is deleted and written again; without the cache, or without
    the `flatbuffers` package that serialization needs, or for a `functools.partial` (which
    may carry arrays the key would not see), this is `jitted(*args, **static)`.

    Args:
      jitted: a jitted function; args: its traced arguments (a pytree each); **static: its
        static arguments.

    Returns:
      What `jitted` returns.

    Raises:
      What `jitted` raises.
    """
    leaves, in_tree = jax.tree_util.tree_flatten(args)
    # A functools.partial has no name, and may carry arrays that the key would not see.
    path = (_export_path(jitted, leaves, in_tree, static) if hasattr(jitted, "__name__")
            else None)
    if path is None:
        return jitted(*args, **static)
    if path not in _LOADED:
        kind = jitted.kind if isinstance(jitted, jit) else "fast_code"
        _LOADED[path] = (_read(path, jitted.__name__, kind)
                         or _export(jitted, leaves, in_tree, static, path, kind))
        while len(_LOADED) > _MAX_LOADED:
            _LOADED.popitem(last=False)
    _LOADED.move_to_end(path)
    if _LOADED[path] is None:  # this program could not be exported here
        return jitted(*args, **static)
    run, out_tree = _LOADED[path]
    return jax.tree_util.tree_unflatten(out_tree, run(*_plain(leaves)[0]))


# The exports this process has loaded or made, most recently used last: at most this many.
_MAX_LOADED = 32
_LOADED: collections.OrderedDict = collections.OrderedDict()


def _runner(blob: bytes, name: str, kind: str):
    """The serialized export `blob` as a jitted function of its flat arguments, compiled with
    `compiler_options(kind)` and named `name` (<function>_exported: in JAX's logs and its cache's
    entries, which the command line's cache guard names); the same object again runs its
    compiled program."""
    _load_lapack()
    call = jax.export.deserialize(bytearray(blob)).call

    def run(*leaves):
        return call(*leaves)

    run.__name__ = run.__qualname__ = name
    return _jit_with_options(run, kind)


def _read(path: str, name: str, kind: str):
    """(runner, output treedef) of an entry, or None if there is none; a damaged entry
    (truncated, or written by another version) is deleted."""
    try:
        with open(path, "rb") as f:
            out_tree, blob = pickle.load(f)
        return _runner(blob, f"{name}_exported", kind), out_tree
    except FileNotFoundError:
        return None
    except Exception:
        _remove(path)
        return None


def _export(jitted, leaves, in_tree, static, path: str, kind: str):
    """(runner of the jax.export.Exported of jitted on the flat arguments `leaves` (of the
    pytree `in_tree`), its output's treedef), the export written to the entry `path`; None if
    jax cannot export or serialize it."""
    plain, impls = _plain(leaves)
    out_tree = []
    # The function itself: compile options belong to the outermost jit only (the runner's).
    inner = jitted.fn if isinstance(jitted, jit) else jitted

    def flat(*plain):
        leaves = [v if impl is None else jax.random.wrap_key_data(v, impl=impl)
                  for v, impl in zip(plain, impls)]
        out, tree = jax.tree_util.tree_flatten(
            inner(*jax.tree_util.tree_unflatten(in_tree, leaves), **static))
        out_tree.append(tree)
        return out

    flat.__name__ = flat.__qualname__ = jitted.__name__  # the name in JAX's logs and the cache
    try:
        exported = jax.export.export(jax.jit(flat))(*plain)
        blob = bytes(exported.serialize())
    except Exception:  # e.g. an operation this jax cannot serialize: run it as it is
        return None
    _write(path, pickle.dumps((out_tree[0], blob)))
    # Run what a later process will load: a deserialized export lowers to another module (and
    # so another compilation cache key) than the one just made.
    return _runner(blob, f"{jitted.__name__}_exported", kind), out_tree[0]


@functools.cache
def _load_lapack() -> None:
    """Lowers one LAPACK call, which loads jaxlib's LAPACK kernels: older jaxlib loads them
    only there, and a process that runs an exported program lowers none of its own (jax 0.4.30
    to 0.7 crashed with SIGSEGV calling an export that factorizes a matrix)."""
    jax.jit(jnp.linalg.cholesky).lower(np.eye(2, dtype=np.float32))


def _plain(leaves) -> tuple[list, list]:
    """PRNG key leaves as their raw data (older jax cannot serialize key types), and each
    leaf's key implementation (None for other leaves)."""
    impls = [jax.random.key_impl(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)
             else None for v in leaves]
    return [v if impl is None else jax.random.key_data(v)
            for v, impl in zip(leaves, impls)], impls


def _export_path(jitted, leaves, in_tree, static) -> str | None:
    """The entry of this call (flat arguments `leaves` of the pytree `in_tree`) in the cache's
    exports, or None when there is no cache or exports cannot be serialized here."""
    directory = jax.config.jax_compilation_cache_dir
    if not directory or not jax.config.jax_enable_compilation_cache or not _can_serialize():
        return None
    key = hashlib.sha256()
    for part in (_source_digest(), jax.__version__, jax.lib.__version__, jax.default_backend(),
                 jax.config.jax_enable_x64, jax.config.jax_default_matmul_precision,
                 jitted.__name__, repr(sorted(static.items())), in_tree,
                 *((np.shape(v), str(v.dtype)) for v in leaves)):
        key.update(repr(part).encode() + b"\0")
    return os.path.join(directory, EXPORTS, f"{jitted.__name__}-{key.hexdigest()[:40]}")


@functools.cache
def _can_serialize() -> bool:
    try:
        import flatbuffers  # noqa: F401  (jax.export's serialization imports it)
        importlib.import_module("jax.export")  # not imported by `import jax` in older jax
    except ImportError:
        return False
    return True


@functools.cache
def _source_digest() -> str:
    """A digest of moejax's source files: an export of another moejax is never loaded."""
    key = hashlib.sha256()
    root = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(glob.glob(os.path.join(glob.escape(root), "**", "*.py"), recursive=True)):
        with open(name, "rb") as f:
            key.update(os.path.relpath(name, root).encode() + b"\0" + f.read())
    return key.hexdigest()


def _write(path: str, blob: bytes) -> None:
    """Writes an entry whole or not at all (a temporary file renamed: processes sharing the
    cache never read half an entry); an unwritable cache is skipped silently, since
    `enable_compilation_cache` already said so."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), delete=False) as f:
            f.write(blob)
        os.replace(f.name, path)
    except OSError:
        pass


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass

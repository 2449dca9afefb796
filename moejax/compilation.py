"""JAX's persistent compilation cache, set up for moejax: most of a small table's first fit is XLA
compilation, and a cache on disk lets a later process skip it (docs/scale.md)."""

import glob
import os
import re
import shutil
import sys
import traceback

import jax
from jax.experimental.compilation_cache import compilation_cache


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
    compile, which leaves out most of a fit's).

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
    for entry in _entries(path):
        try:
            os.remove(entry) if os.path.isfile(entry) else shutil.rmtree(entry)
        except OSError:
            pass
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    jax.clear_caches()

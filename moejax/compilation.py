"""JAX's persistent compilation cache, set up for moejax: most of a small table's first fit is XLA
compilation, and a cache on disk lets a later process skip it (docs/scale.md)."""

import os
import sys

import jax


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

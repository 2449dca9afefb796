"""How moejax compiles: XLA's options per kind of program, and JAX's persistent compilation
cache set up for moejax (most of a small table's first fit is XLA compilation, and a cache on
disk lets a later process skip it; docs/scale.md "Compiling once"). `program_cache` keeps a
fit's programs exported in the same directory and guards it."""

import functools
import os
import stat
import sys

import jax
import numpy as np


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
    exported (`program_cache.cached_call`), so that a later process does not even trace them.

    A program read from the cache runs in this process, so the directory must be this user's
    own: one that another user owns or can write in (`directory_problem`) is refused. A new
    directory is created readable by this user only. moejax's fits guard the cache: a damaged
    entry is deleted and compiled again, with one warning (`program_cache.guarded`).

    Args:
      path: the directory (created if needed); None for `default_cache_dir()`.

    Returns:
      The directory in use, or None if it cannot be used, in which case one line on stderr
      says why and compilation goes on without a cache.

    Raises:
      ValueError: `path` is not a str, an os.PathLike or None.

    Example (first thing in a script; it changes this process's JAX configuration):

        import moejax as mj
        mj.enable_compilation_cache()       # ~/.cache/moejax, as the command line uses
    """
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ValueError("path must be a directory (a str or os.PathLike) or None for "
                         f"default_cache_dir(), got {type(path).__name__} {path!r}")
    path = default_cache_dir() if path is None else os.fspath(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        problem = directory_problem(path)
    except OSError as e:
        problem = str(e)
    if problem:
        sys.stderr.write(f"moejax: warning: no compilation cache ({problem}); continuing "
                         "without.\n")
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def directory_problem(path: str) -> str | None:
    """Why `path` cannot hold a compilation cache, or None if it can: it must be a directory
    this user can write in, owned by this user and not writable by others (a program planted
    there would run in every later process that reads the cache)."""
    try:
        info = os.stat(path)
    except OSError as e:
        return str(e)
    if not stat.S_ISDIR(info.st_mode):
        return f"{path!r} is not a directory"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return (f"{path!r} belongs to another user (uid {info.st_uid}), and a program in it "
                "would run in this process")
    if hasattr(os, "getuid") and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"other users can write in {path!r} (mode {stat.S_IMODE(info.st_mode):o}), "
                "and a program they put there would run in this process; chmod go-w it to "
                "use it")
    if not os.access(path, os.W_OK | os.X_OK):
        return f"cannot write in {path!r}"
    return None


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
            self._jitted = jit_with_options(self.fn, self.kind, **self.kwargs)
        return self._jitted


def jit_with_options(fn, kind: str, **kwargs):
    """jax.jit(fn, **kwargs) with `compiler_options(kind)` when there are any."""
    options = compiler_options(kind)
    return jax.jit(fn, **kwargs, **({} if options is None else {"compiler_options": options}))

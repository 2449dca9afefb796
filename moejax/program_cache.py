"""Programs kept on disk between processes: a fit's large programs exported into the
persistent cache's directory (`cached_call`), and the guard that turns a damaged entry of that
directory into one warning and a new compilation (`guarded`). docs/scale.md "Compiling once".

An exported entry is data only: a header line, a JSON header (the entry's full key, the
payload's digest, the output's structure as names of moejax's own NamedTuples) and the
serialized StableHLO module (`jax.export`). Nothing read back is unpickled or imported from
outside moejax, and an entry whose header does not match its key or whose payload does not
match its digest is deleted and written again.
"""

import collections
import functools
import glob
import hashlib
import importlib
import json
import os
import re
import shutil
import sys
import tempfile
import traceback
import warnings

import jax
import jax.numpy as jnp
from jax.experimental.compilation_cache import compilation_cache
import numpy as np

from moejax import compilation

# The persistent cache's subdirectory of exported programs.
EXPORTS = "moejax-exports"
# The first line of an exported entry (its format's version).
_MAGIC = b"moejax export 2\n"


def cache_directory() -> str | None:
    """The directory of JAX's persistent cache when it is on in this process, else None."""
    directory = jax.config.jax_compilation_cache_dir
    return directory if directory and jax.config.jax_enable_compilation_cache else None


def guarded(run):
    """run(), with the persistent cache guarded when it is on: entries JAX reported it could
    not read (truncated or corrupted files) are deleted, so that the next compilation writes
    them again, with one warning; and when run() fails inside JAX, which an entry of other
    shapes loaded under a key can cause, the cache is emptied and turned off for this process
    and run() called once more, with one warning. Other warnings pass through unchanged;
    moejax's own errors (checks of the data) propagate at once."""
    directory = cache_directory()
    if directory is None:
        return run()
    caught, notes = [], []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return run()
            except Exception as e:
                if not raised_inside_jax(e) or cache_directory() is None:
                    raise
                drop_cache(directory)
                notes.append(f"a program from the compilation cache {directory!r} failed "
                             f"({type(e).__name__}); emptied the cache and compiled again")
                return run()
    finally:  # outside catch_warnings: the caller's filters decide what is shown
        damaged = discard_unreadable(directory, caught)
        if damaged:
            notes.append(f"unreadable entries in the compilation cache {directory!r} "
                         f"({', '.join(damaged)}) were deleted and compiled again")
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                                   registry=_SHOWN)
        for note in notes:
            warnings.warn(note, RuntimeWarning, stacklevel=3)


# Which re-emitted warnings were shown, so that "default" filters show each once.
_SHOWN: dict = {}


def _entries(path: str, function: str | None = None) -> list[str]:
    """The cache's entry files (JAX names them jit_<function>-<key>-cache), all or one
    function's."""
    pattern = f"jit_{glob.escape(function)}-*" if function else "jit_*"
    return glob.glob(os.path.join(glob.escape(path), pattern))


def discard_unreadable(path: str, caught) -> list[str]:
    """Deletes the entries JAX reported it could not read (warnings in `caught`, from
    `warnings.catch_warnings(record=True)`), so that the next compilation writes them again
    instead of every later run warning. Those warnings are removed from `caught` (the others
    stay); returns the names of their functions."""
    functions = []
    for w in list(caught):
        found = re.search(r"persistent compilation cache entry for '([^']+)'", str(w.message))
        if found:
            caught.remove(w)
            functions.append(found.group(1).removeprefix("jit_"))
            for entry in _entries(path, found.group(1).removeprefix("jit_")):
                _remove(entry)
    return sorted(set(functions))


def raised_inside_jax(error: BaseException) -> bool:
    """Whether `error` was raised in JAX's own code, which a damaged cache entry can cause,
    unlike moejax's checks of the data: its innermost frame is JAX's, or JAX removed its
    frames from the traceback (JAX's default filtering says so in a note)."""
    while error is not None:
        frames = traceback.extract_tb(error.__traceback__)
        if frames and f"{os.sep}jax{os.sep}" in frames[-1].filename:
            return True
        if any("JAX has removed its internal frames" in note
               for note in getattr(error, "__notes__", ())):
            return True
        error = error.__cause__  # the whole traceback, where JAX keeps it as the cause
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


def cached_call(jitted, args: tuple, **static):
    """`jitted(*args, **static)`, through an exported program kept in the persistent cache's
    directory when the cache is on (`enable_compilation_cache`, the command line), guarded
    (`guarded`).

    JAX's cache skips XLA's compilation but not the tracing and lowering before it, about 2 s
    of a warm command-line fit. The program exported once (`jax.export`, a serialized StableHLO
    module) is loaded instead in a later process: nothing is traced. An entry is keyed by
    everything that shapes the program: moejax's source, the jax and jaxlib versions, the
    backend, x64, the function, its static arguments and the shapes and dtypes of `args`; it
    holds that key and is used only under it. Without the cache, in a directory that other
    users can write in (`compilation.directory_problem`), without the `flatbuffers` package
    that serialization needs, for a `functools.partial` (which may carry arrays the key would
    not see) or for an output that is not made of moejax's NamedTuples, tuples, lists and
    dicts, this is `jitted(*args, **static)`.

    Args:
      jitted: a jitted function; args: its traced arguments (a pytree each); **static: its
        static arguments.

    Returns:
      What `jitted` returns.

    Raises:
      What `jitted` raises.
    """
    return guarded(lambda: _cached_call(jitted, args, static))


def _cached_call(jitted, args: tuple, static: dict):
    leaves, in_tree = jax.tree_util.tree_flatten(args)
    # A functools.partial has no name, and may carry arrays that the key would not see.
    key = _key(jitted, leaves, in_tree, static) if hasattr(jitted, "__name__") else None
    path = _entry_path(key, jitted.__name__) if key is not None else None
    if path is None:
        return jitted(*args, **static)
    if path not in _LOADED:
        kind = jitted.kind if isinstance(jitted, compilation.jit) else "fast_code"
        _LOADED[path] = (_read(path, key, jitted.__name__, kind)
                         or _export(jitted, leaves, in_tree, static, path, key, kind))
        while len(_LOADED) > _MAX_LOADED:
            _LOADED.popitem(last=False)
    _LOADED.move_to_end(path)
    if _LOADED[path] is None:  # this program could not be exported here
        return jitted(*args, **static)
    run, outputs = _LOADED[path]
    return _build(outputs, run(*_plain(leaves)[0]))


# The exports this process has loaded or made, most recently used last: at most this many.
_MAX_LOADED = 32
_LOADED: collections.OrderedDict = collections.OrderedDict()


def _runner(blob: bytes, name: str, kind: str):
    """The serialized export `blob` as a jitted function of its flat arguments, compiled with
    `compilation.compiler_options(kind)` and named `name` (<function>_exported: in JAX's logs
    and its cache's entries); the same object again runs its compiled program. Also the
    number of outputs the export returns."""
    _load_lapack()
    exported = jax.export.deserialize(bytearray(blob))
    call = exported.call

    def run(*leaves):
        return call(*leaves)

    run.__name__ = run.__qualname__ = name
    return compilation.jit_with_options(run, kind), len(exported.out_avals)


def _read(path: str, key: list[str], name: str, kind: str):
    """(runner, output structure) of the entry at `path`, or None if there is none; an entry
    that is damaged (truncated, another format, written under another key, or outputs that do
    not match its structure) is deleted."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        header, blob = _parse(data)
        if header["key"] != key or header["sha256"] != hashlib.sha256(blob).hexdigest():
            raise ValueError("another key or a damaged payload")
        run, num_outputs = _runner(blob, f"{name}_exported", kind)
        if len(jax.tree_util.tree_leaves(_build(header["outputs"], range(num_outputs)))) != \
                num_outputs:
            raise ValueError("outputs do not match their structure")
        return run, header["outputs"]
    except Exception:
        _remove(path)
        return None


def _parse(data: bytes) -> tuple[dict, bytes]:
    """(JSON header, payload) of an entry's bytes; ValueError if they are not one."""
    if not data.startswith(_MAGIC):
        raise ValueError("not a moejax export")
    size = int.from_bytes(data[len(_MAGIC):len(_MAGIC) + 8], "little")
    start = len(_MAGIC) + 8
    if start + size > len(data):
        raise ValueError("truncated")
    return json.loads(data[start:start + size]), data[start + size:]


def _export(jitted, leaves, in_tree, static, path: str, key: list[str], kind: str):
    """(runner of the jax.export.Exported of jitted on the flat arguments `leaves` (of the
    pytree `in_tree`), the structure of its output), the export written to the entry `path`;
    None if jax cannot export or serialize it, or its output cannot be described as data."""
    plain, impls = _plain(leaves)
    outputs = []
    # The function itself: compile options belong to the outermost jit only (the runner's).
    inner = jitted.fn if isinstance(jitted, compilation.jit) else jitted

    def flat(*plain):
        leaves = [v if impl is None else jax.random.wrap_key_data(v, impl=impl)
                  for v, impl in zip(plain, impls)]
        out = inner(*jax.tree_util.tree_unflatten(in_tree, leaves), **static)
        flat_out = jax.tree_util.tree_leaves(out)
        outputs.append(_describe(out, {id(v): i for i, v in reversed(list(enumerate(flat_out)))}))
        return flat_out

    flat.__name__ = flat.__qualname__ = jitted.__name__  # the name in JAX's logs and the cache
    try:
        exported = jax.export.export(jax.jit(flat))(*plain)
        blob = bytes(exported.serialize())
    except Exception:  # e.g. an operation this jax cannot serialize: run it as it is
        return None
    header = json.dumps(dict(key=key, sha256=hashlib.sha256(blob).hexdigest(),
                             outputs=outputs[0])).encode()
    _write(path, _MAGIC + len(header).to_bytes(8, "little") + header + blob)
    # Run what a later process will load: a deserialized export lowers to another module (and
    # so another compilation cache key) than the one just made.
    return _runner(blob, f"{jitted.__name__}_exported", kind)[0], outputs[0]


def _describe(tree, index: dict):
    """The structure of an output pytree as JSON data: a leaf as its position in the flat
    outputs (`index`, by identity), tuples, lists, str-keyed dicts and None as themselves,
    moejax's NamedTuples by name with their fields (static strings and numbers as constants).
    TypeError for anything else (that output is then not exported)."""
    if id(tree) in index:
        return index[id(tree)]
    if tree is None:
        return None
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        cls = type(tree)
        if cls.__module__.split(".")[0] != "moejax":
            raise TypeError(f"not a moejax NamedTuple: {cls}")
        return {"namedtuple": f"{cls.__module__}:{cls.__qualname__}",
                "fields": [_describe(v, index) for v in tree]}
    if isinstance(tree, (tuple, list)):
        return {type(tree).__name__: [_describe(v, index) for v in tree]}
    if isinstance(tree, dict) and all(isinstance(k, str) for k in tree):
        return {"dict": [[k, _describe(v, index)] for k, v in tree.items()]}
    if isinstance(tree, (str, bool, int, float)):
        return {"const": tree}
    raise TypeError(f"cannot describe {type(tree)}")


def _build(description, leaves):
    """The output pytree that `description` (`_describe`) stands for, with `leaves` (a
    sequence) in the leaves' positions; ValueError for a name that is not one of moejax's
    NamedTuples."""
    if description is None or isinstance(description, int):
        return None if description is None else leaves[description]
    if "namedtuple" in description:
        return _namedtuple(description["namedtuple"])(
            *(_build(v, leaves) for v in description["fields"]))
    if "tuple" in description or "list" in description:
        kind = tuple if "tuple" in description else list
        return kind(_build(v, leaves) for v in description[kind.__name__])
    if "dict" in description:
        return {k: _build(v, leaves) for k, v in description["dict"]}
    return description["const"]


@functools.cache
def _namedtuple(name: str) -> type:
    """The NamedTuple class `module:qualname`, which must be one of moejax's own."""
    module, _, qualname = name.partition(":")
    if module.split(".")[0] != "moejax":
        raise ValueError(f"not a moejax class: {name!r}")
    cls = sys.modules.get(module) or importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
        raise ValueError(f"not a NamedTuple: {name!r}")
    return cls


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


def _key(jitted, leaves, in_tree, static) -> list[str] | None:
    """Everything that shapes this call's program (flat arguments `leaves` of the pytree
    `in_tree`), as strings; None when there is no cache, it is in a directory that is not
    safe to read, or exports cannot be serialized here."""
    directory = cache_directory()
    if directory is None or not _can_serialize() or compilation.directory_problem(directory):
        return None
    return [repr(part) for part in (
        _source_digest(), jax.__version__, jax.lib.__version__, jax.default_backend(),
        jax.config.jax_enable_x64, jax.config.jax_default_matmul_precision, jitted.__name__,
        repr(sorted(static.items())), in_tree, *((np.shape(v), str(v.dtype)) for v in leaves))]


def _entry_path(key: list[str], name: str) -> str:
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:40]
    return os.path.join(cache_directory(), EXPORTS, f"{name}-{digest}")


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
    cache never read half an entry; one that cannot be written, on a full disk, is removed);
    an unwritable cache is skipped silently, since `enable_compilation_cache` already said
    so."""
    directory, temporary = os.path.dirname(path), None
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if compilation.directory_problem(directory):
            return
        with tempfile.NamedTemporaryFile(dir=directory, delete=False) as f:
            temporary = f.name
            f.write(blob)
        os.replace(temporary, path)
    except OSError:
        if temporary is not None:
            _remove(temporary)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass

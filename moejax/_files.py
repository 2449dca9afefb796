"""Atomic file writes (a saved model, a predictions table): readers see the old file or the
whole new one, never a partial write, and no temporary outlives its process for long."""

import contextlib
import glob
import os
import signal
import socket
import stat
import tempfile
import threading

_TMP_SUFFIX = ".moejax.tmp"


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


def _stem(path: str) -> str:
    """The file name as it starts a temporary's name: cut so that the temporary's whole name
    (stem, host, pid, 8 random characters, suffix) fits the file system's name limit."""
    directory, base = os.path.split(path)
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    room = limit - len(f"..{_host()}-{os.getpid()}.12345678{_TMP_SUFFIX}") - 12  # pid growth
    return base[:max(room, 1)]


def _remove_stale_temporaries(path: str) -> None:
    """Deletes temporaries of earlier saves to `path` made on this host by a process that no
    longer runs (a save killed with SIGKILL cannot clean up after itself). Temporaries of
    other hosts (a shared file system) are left alone: their processes cannot be checked."""
    directory, stem = os.path.dirname(path), _stem(path)
    pattern = os.path.join(glob.escape(directory), f".{glob.escape(stem)}.*{_TMP_SUFFIX}")
    for tmp in glob.glob(pattern):
        owner = os.path.basename(tmp)[len(stem) + 2:].split(".", 1)[0]
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

    path: str, bytes or os.PathLike. A symbolic link is written through: the file it points
    to is replaced and the link kept. A FIFO, socket or device is refused (ValueError), as
    is a directory; a missing directory is a FileNotFoundError naming it and `path`.
    """
    given = os.fsdecode(os.fspath(path))
    path = os.path.realpath(given) if os.path.islink(given) else os.path.abspath(given)
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise ValueError(f"{given!r} is a directory, not a file to write.")
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{given!r} is not a regular file (a FIFO, socket or device); "
                         "refusing to replace it: choose another path.")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {given!r}: the directory {directory!r} does "
                                "not exist.")
    _remove_stale_temporaries(path)
    with _terminate_raises():
        fd, tmp = tempfile.mkstemp(prefix=f".{_stem(path)}.{_host()}-{os.getpid()}.",
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

"""Writing outputs: checked before the work, staged beside the target, published without clobbering.

Every file or folder geodet writes (detections, model files, chip folders, PNGs) goes through here:

1. :func:`check_output`, before any long work: the folder exists and can be written (a probe file
   is really created, so read-only mounts, ACLs and root-squashed shares are caught, not just mode
   bits), and the target does not exist unless ``overwrite``.
2. :func:`staged_file` / :func:`staged_folder` / :func:`scratch_folder`: the caller writes into a
   temporary beside the target (same file system, so publishing is a rename), named
   ``.<target name>.geodet-tmp-<host>-<pid>-<random>``.
3. Publishing. With ``overwrite``: ``os.replace`` (atomic). Without: a no-clobber primitive, never
   "check, then rename": ``os.link`` for a file (the kernel refuses an existing name, also when two
   processes race) and ``os.rename`` of a folder onto a missing or empty folder (the kernel refuses
   a non-empty one). The loser of a race gets a :class:`GeodetError`; the winner's output stays.
4. Temporaries left by a geodet process of this host that died (kill -9, power loss) are removed
   the next time geodet checks or writes an output in the same folder.

Files and folders get the permissions of the umask, as ``open()`` and ``mkdir`` give.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Iterator, Sequence, Tuple, Union

from geodet.errors import GeodetError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Marks a temporary output; what follows is ``<host>-<pid>-<random>``.
TEMP_TAG = ".geodet-tmp-"

#: errno values of file systems that have no hard links (publish falls back to O_EXCL + rename).
_NO_LINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def _host() -> str:
    return "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in socket.gethostname()) or "host"


def temp_path(target: PathLike) -> Path:
    """A new, unused temporary name beside ``target`` (nothing is created)."""
    target = Path(target)
    return target.parent / f".{target.name}{TEMP_TAG}{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def _exists_message(target: Path, *, folder: bool = False) -> str:
    what = "exists and is not empty" if folder else "already exists"
    return f"{target} {what}; choose another name or pass --overwrite."


def check_output(path: PathLike, *, overwrite: bool = False, folder: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written; sweep stale temporaries beside it.

    Args:
        path: the output file, or the output folder when ``folder``.
        overwrite: an existing output may be replaced.
        folder: the output is a folder (an existing empty folder is no obstacle).

    Returns:
        ``path`` as a Path.

    Raises:
        GeodetError: the parent folder is missing or cannot be written, or the output exists
            (a non-empty folder, when ``folder``) and ``overwrite`` is False.
    """
    target = Path(path)
    parent = Path(os.path.abspath(target)).parent
    if not parent.is_dir():
        raise GeodetError(f"the folder {parent} does not exist.")
    if folder:
        if target.exists() and not target.is_dir():
            raise GeodetError(f"{target} exists and is not a folder.")
        if target.is_dir() and any(target.iterdir()) and not overwrite:
            raise GeodetError(_exists_message(target, folder=True))
    else:
        if target.is_dir():
            raise GeodetError(f"{target} is a folder; give a file name.")
        if target.exists() and not overwrite:
            raise GeodetError(_exists_message(target))
    check_writable(parent)
    sweep_stale(parent)
    return target


def check_writable(folder: PathLike) -> None:
    """Check that files can be made in ``folder`` by making one (so read-only mounts are caught too).

    Raises:
        GeodetError: it cannot.
    """
    probe = temp_path(Path(folder) / "write-probe")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise GeodetError(f"cannot write to the folder {folder} ({exc.strerror or exc}).") from None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_stale(folder: PathLike) -> int:
    """Remove the temporaries in ``folder`` of geodet processes of this host that no longer run.

    Returns:
        the number of entries removed.
    """
    host, removed = _host(), 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(".") or TEMP_TAG not in entry.name:
            continue
        owner = entry.name.rsplit(TEMP_TAG, 1)[1].rsplit("-", 2)
        if len(owner) != 3 or owner[0] != host or not owner[1].isdigit() or _pid_alive(int(owner[1])):
            continue
        remove_path(Path(entry.path))
        removed += 1
        log.info("removed %s, left by an interrupted geodet run", entry.path)
    return removed


def remove_path(path: Path) -> None:
    """Remove a file, a link or a whole folder; one already gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def publish_file(tmp: PathLike, target: PathLike, *, overwrite: bool = False) -> None:
    """Move the finished file ``tmp`` to ``target``, atomically; never replace it unless ``overwrite``.

    Raises:
        GeodetError: ``target`` exists (perhaps written by another run meanwhile) and not ``overwrite``.
    """
    tmp, target = Path(tmp), Path(target)
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise GeodetError(_exists_message(target)) from None
    except OSError as exc:
        if exc.errno not in _NO_LINK_ERRNOS:
            raise
        try:  # no hard links here: claim the name exclusively, then fill it atomically
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            raise GeodetError(_exists_message(target)) from None
        os.replace(tmp, target)
    else:
        os.unlink(tmp)


def publish_files(pairs: Sequence[Tuple[PathLike, PathLike]], *, overwrite: bool = False) -> None:
    """Publish the files of one output (e.g. a shapefile's .shp, .dbf, .shx, .prj).

    The first pair decides: it is published without clobbering (unless ``overwrite``); the
    others then replace whatever stands at their names.
    """
    for k, (tmp, target) in enumerate(pairs):
        publish_file(tmp, target, overwrite=overwrite or k > 0)


def publish_folder(tmp: PathLike, target: PathLike, *, overwrite: bool = False) -> None:
    """Move the finished folder ``tmp`` to ``target``.

    Without ``overwrite`` the rename succeeds only onto a missing or empty folder. With it, an
    existing ``target`` is moved aside, the new folder moved in, and the old one deleted.

    Raises:
        GeodetError: ``target`` is not empty (perhaps filled by another run meanwhile) and not ``overwrite``.
    """
    tmp, target = Path(tmp), Path(target)
    aside = None
    if overwrite and target.exists():
        aside = temp_path(target)
        os.rename(target, aside)
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise GeodetError(_exists_message(target, folder=True)) from None
        raise
    finally:
        if aside is not None:
            remove_path(aside)


@contextlib.contextmanager
def staged_file(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a file by writing the yielded temporary path; it is published when the block ends
    without an error, and removed otherwise (see :func:`publish_file`)."""
    target = Path(path)
    tmp = temp_path(target)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        publish_file(tmp, target, overwrite=overwrite)
    finally:
        remove_path(tmp)


@contextlib.contextmanager
def scratch_folder(path: PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` for writers that make several files; always removed."""
    tmp = temp_path(Path(path))
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
    finally:
        remove_path(tmp)


@contextlib.contextmanager
def staged_folder(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Fill the yielded temporary folder; it becomes ``path`` when the block ends without an
    error (see :func:`publish_folder`), and is removed otherwise."""
    with scratch_folder(path) as tmp:
        yield tmp
        publish_folder(tmp, path, overwrite=overwrite)

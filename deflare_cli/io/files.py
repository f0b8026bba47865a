"""File helpers shared by every reader and writer: atomic outputs (files and folders), distinct
paths, listing event files by suffix, and hashing for provenance."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError, OutputError

FAERY_SUFFIXES = (".raw", ".dat", ".aedat4", ".es", ".csv")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")

Source = str | Path | BinaryIO


def source_label(source: Source, name: str | None = None) -> str:
    """How messages call an input: the given name, else its path, else ``<stream>``."""
    return name or (str(source) if isinstance(source, str | Path) else "<stream>")


def list_event_files(folder: Path) -> list[Path]:
    """Event files in a folder (not recursive, by suffix), sorted by name; hidden files (such
    as the temporary files of an interrupted run) are skipped."""
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    suffixes = HDF5_SUFFIXES + FAERY_SUFFIXES
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def check_readable(path: Path) -> None:
    """Refuse a missing path, a folder, or a file this process may not read."""
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not an event file")
    if not os.access(path, os.R_OK):
        raise InputError(path, "permission denied")


def make_folder(folder: Path) -> None:
    """Create an output folder (and its parents), or say in one line why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file in the way, permission denied, a read-only file system
        reason = error.strerror or error
        raise OutputError(f"{folder}: cannot create this folder ({reason})") from None


def check_writable(target: Path) -> None:
    """The :class:`OutputError` that :func:`atomic_output` would raise for ``target`` (a
    folder, or a file in a folder that does not exist), raised now: before long work, not
    after it."""
    final = Path(target)
    if final.is_dir():
        raise OutputError(f"{final}: is a folder; give a file name")
    if not final.parent.exists():
        raise OutputError(f"{final}: the folder {final.parent} does not exist")
    if not final.parent.is_dir():
        raise OutputError(f"{final}: {final.parent} is a file, not a folder")


@contextlib.contextmanager
def atomic_output(target: str | Path | BinaryIO, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` in one rename.

    On any error the temporary file is removed and ``target`` is left as it was. A binary stream
    target (stdout) receives the finished file's bytes instead. ``exclusive``: the target must
    not exist when the file is finished (a hard link, which fails if another run created it
    meanwhile), so two runs cannot both "create" one file. The temporary name starts with a dot:
    folder listings of event files skip it.
    """
    if not isinstance(target, str | Path):
        with tempfile.TemporaryDirectory() as folder:
            temp_path = Path(folder) / "output"
            yield temp_path
            with open(temp_path, "rb") as finished:
                shutil.copyfileobj(finished, target)
            target.flush()
        return
    final = Path(target)
    check_writable(final)
    # The temporary name keeps the target's suffix, for writers that choose a format by it.
    try:
        handle, name = tempfile.mkstemp(
            dir=final.parent, prefix=f".{final.name}.", suffix=f".tmp{final.suffix}"
        )
    except OSError as error:  # permission denied, a read-only file system, ...
        raise OutputError(f"{final}: cannot be written ({error.strerror or error})") from None
    os.close(handle)
    temp_path = Path(name)
    os.chmod(temp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield temp_path
        if exclusive:
            _link_new(temp_path, final)
        else:
            os.replace(temp_path, final)
    except BaseException as error:
        temp_path.unlink(missing_ok=True)
        if _out_of_space(error, final.parent):
            raise OutputError(
                f"{final}: no space left on the device ({_free_bytes(final.parent):,} bytes "
                "free); nothing was written"
            ) from None
        raise


def check_new_folder(target: Path) -> None:
    """The :class:`InputError` that :func:`atomic_folder` would raise for ``target`` (a file,
    or a folder that holds anything), raised now: before long work, not after it."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(target, "exists and is not empty; write into a new folder")


@contextlib.contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``target`` to fill; on success it becomes
    ``target`` in one rename, so a run cut off (an error, Ctrl-C) leaves no half-made folder.

    ``target`` must not exist or be empty. On any error the staging folder is removed. A staging
    folder left by a run that was killed outright is this function's own, and is removed first.
    """
    final = Path(target)
    check_new_folder(final)
    staging = final.with_name(f".{final.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
    except OSError as error:
        raise OutputError(f"{final}: cannot be written ({error.strerror or error})") from None
    try:
        yield staging
        if final.exists():
            final.rmdir()  # empty, as checked above
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _out_of_space(error: BaseException, folder: Path) -> bool:
    """ENOSPC, or a library's own error (torch: "iostream error") on an all but full disk."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, RuntimeError | OSError) and _free_bytes(folder) < (1 << 20)


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return -1


def require_space(path: Path, needed: int, target: object) -> None:
    """Refuse to write ``needed`` more bytes next to ``path`` when the disk lacks them: some
    libraries (HDF5) crash instead of failing cleanly when the disk fills up mid-write."""
    free = _free_bytes(path.parent)
    if 0 <= free < needed:
        raise OutputError(
            f"{target}: no space left on the device: {free:,} bytes free, writing needs at "
            f"least {needed:,} more; nothing was written"
        )


def _link_new(temp_path: Path, final: Path) -> None:
    """Give the finished file its name only if no file has it (then drop the temp name)."""
    try:
        os.link(temp_path, final)
    except FileExistsError:
        raise OutputError(
            f"{final}: another run created it meanwhile; pass --overwrite to replace it"
        ) from None
    except OSError:  # a file system without hard links: check, then rename
        if final.exists():
            raise OutputError(f"{final}: exists already; pass --overwrite to replace it") from None
        os.replace(temp_path, final)
        return
    temp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_distinct(source: Source, target: Source) -> None:
    """Refuse to write an output over its own input."""
    if not isinstance(source, str | Path) or not isinstance(target, str | Path):
        return
    source_path, target_path = Path(source), Path(target)
    same = source_path.resolve() == target_path.resolve()
    if not same and source_path.exists() and target_path.exists():
        same = os.path.samefile(source_path, target_path)
    if same:
        raise OutputError(f"{target}: the output would overwrite the input; choose another name")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, for provenance."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""One writer per folder: an advisory lock on a small file beside the folder.

A POSIX record lock (lockf), not flock: the kernel releases it when the holder dies,
however it dies (kill -9 too), and forked children (data loader workers) do not
inherit it, so workers outliving a killed trainer for a moment do not keep its
folder locked (with flock they did). So a crash never leaves a folder locked; a second writer gets one clear line instead of
doubling the first one's work (two renderers into one folder wrote every image twice
and a manifest of 24 lines for 12 files). A training run's lock lives beside its
folder, so it survives the folder being renamed (--restart) and is never mistaken
for run output; a renderer's lives inside its output folder (`.xurdif.lock`), where
all it writes belongs.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator


class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock."""


# POSIX locks belong to the process: a second lock of the same file from this process
# would be granted. These are the ones this process holds.
_HELD: set[Path] = set()


def lock_path(folder: Path, part: str = "", inside: bool = False) -> Path:
    folder = Path(folder).absolute()
    return folder / f".xurdif{part}.lock" if inside else folder.with_name(f".{folder.name}{part}.lock")


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str, part: str = "", inside: bool = False) -> Iterator[Path]:
    """Hold `folder`'s lock for the block (`part` names one of several locks of a folder,
    e.g. one per training process; `inside`: the lock file in the folder, not beside it).
    FolderBusy names the holder when it is taken."""
    path = lock_path(Path(folder), part, inside)
    if path in _HELD:  # before opening it: closing any descriptor of the file drops a POSIX lock
        raise FolderBusy(f"{folder}: this process (pid {os.getpid()}) is writing it already; wait for it "
                         f"to finish, stop it, or give this {what} another folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN or EACCES: held by a live process
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise FolderBusy(f"{folder}: {holder} is writing it already; wait for it to finish, stop it, "
                             f"or give this {what} another folder") from None
        _HELD.add(path)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what} pid {os.getpid()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})".encode(), 0)
            yield path
        finally:
            _HELD.discard(path)
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a new holder)


def held_elsewhere(folder: str | Path, part: str = "", inside: bool = False) -> bool:
    """Whether another live process holds `folder`'s lock (a report asks whether its run
    still trains). Detected by briefly taking a shared lock, which a writer starting at
    that very moment would see as busy."""
    path = lock_path(Path(folder), part, inside)
    if path in _HELD:  # ours; and opening it here would drop our lock when closed
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no lock file: never locked
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the shared lock, if taken

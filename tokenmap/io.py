"""Atomic writes: build the output beside its destination and rename it into place only when complete.

A command that fails half-way, or is killed, never leaves a partial file or folder at the destination and never
loses the one that was there (docs/architecture.md, conventions). `check_writable` lets a command refuse an unwritable
output before it does any work.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class NotWritableError(OSError):
    """An output path that cannot be written; the message names the path and the reason."""


def check_writable(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Raise NotWritableError unless `atomic_write_lines(path)` (or, with `folder`, `atomic_folder(path)`) can
    write there; call it before the work that produces the output. Returns `path` as a Path.

    Checks that `path` is not a folder (a folder when `folder`), that nothing but folders lies on its way, and
    writes and removes a probe file in its nearest existing folder (the one the atomic writers create the missing
    folders and the temporary sibling in), so permissions, ACLs and read-only file systems all count. Creates
    nothing that stays: missing parent folders are not made here.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise NotWritableError(f"{path}: exists and is not a folder; expected a folder to write")
    if not folder and path.is_dir():
        raise NotWritableError(f"{path}: is a folder; expected a file to write")
    existing = path.parent
    while not existing.exists():  # the atomic writers create the missing folders here
        existing = existing.parent
    if not existing.is_dir():
        raise NotWritableError(f"{path}: cannot create it, {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}-", dir=existing)
    except OSError as error:
        raise NotWritableError(f"{path}: cannot write in {existing} ({error.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return path


def _usual_mode(full: int) -> int:
    """`full` (0o666 for files, 0o777 for folders) less the process umask: the mode `open`/`mkdir` would give."""
    umask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return full & ~umask


def _aside(path: Path) -> Path:
    """Where `atomic_folder` keeps the folder it replaces while the new one is renamed in."""
    return path.with_name(f".{path.name}.replaced")


def _settle_aside(path: Path) -> None:
    """Finish a replacement that stopped between its steps: with a folder at `path`, the new one made it in and the
    old one aside is deleted; with none, the old one is put back."""
    aside = _aside(path)
    if not aside.exists():
        return
    if path.exists():
        shutil.rmtree(aside)
    else:
        os.rename(aside, path)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder of `path`; on success it replaces `path`, on error it is removed.

    A replacement renames the old folder aside (`.NAME.replaced` beside it), renames the new one in, then deletes
    the old one, so a kill at any point leaves a complete folder, old or new, at `path` or aside. A run killed
    between the two renames leaves only the aside folder: the next `atomic_folder(path)` puts it back before it
    starts (or deletes it, when the new folder made it in). An error raised here puts it back at once. A killed run
    may also leave its unfinished temporary sibling (`.NAME-` and a random suffix): nothing reads it; delete it at
    will (it is not removed for you: a run still in progress looks the same). The folder gets the usual mode (0o777
    less the umask), not `mkdtemp`'s private 0o700. One writer per `path` at a time.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    _settle_aside(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        os.chmod(tmp, _usual_mode(0o777))
        yield tmp
        if path.exists():
            os.rename(path, _aside(path))
        os.rename(tmp, path)
    except BaseException:
        _settle_aside(path)  # stopped between the renames: the old folder goes back
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    _settle_aside(path)  # the new folder is in: delete the old one


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary sibling file."""
    return atomic_write_lines(path, [data], binary=True)


def atomic_write_lines(path: str | os.PathLike, lines: Iterable[str | bytes], *, binary: bool = False) -> Path:
    """Write `lines` (each followed by a newline unless `binary`) to `path` through a temporary sibling file; on any
    error, including one raised by the `lines` iterator, the destination is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as handle:
            os.chmod(tmp, _usual_mode(0o666))  # mkstemp makes the file private; give it the usual mode
            for line in lines:
                handle.write(line if binary else line + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def parse_json_object(line: str) -> dict:
    """One JSONL line as a dict; ValueError saying what is wrong otherwise (callers add the file and line number)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"malformed JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    return record

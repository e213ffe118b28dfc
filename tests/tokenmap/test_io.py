"""Atomic writes survive errors and kills at every step, get the usual modes, and unwritable outputs are caught
before any work."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from tokenmap.io import NotWritableError, atomic_folder, atomic_write_lines, check_writable

OLD = {"weights.bin": b"old weights", "sub/config.json": b'{"old": true}'}
NEW = {"weights.bin": b"new weights", "sub/config.json": b'{"new": true}', "extra.txt": b"only in new"}
NEWER = {"weights.bin": b"newer weights"}


class Killed(BaseException):
    """The process dies: this file operation and every later one fail (a BaseException, as SystemExit is)."""


def write_tree(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def read_tree(folder: Path) -> dict[str, bytes] | None:
    if not folder.is_dir():
        return None
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def replace_with(path: Path, files: dict[str, bytes]) -> None:
    with atomic_folder(path) as tmp:
        write_tree(tmp, files)


@contextmanager
def killed_at(monkeypatch: pytest.MonkeyPatch, step: int):
    """File operations of atomic_folder from the `step`-th on raise Killed; yields a list holding the count."""
    calls = [0]

    def dying(function):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] >= step:
                raise Killed(f"killed at operation {calls[0]} ({function.__name__})")
            return function(*args, **kwargs)

        return wrapper

    with monkeypatch.context() as patch:
        for module, name in ((tempfile, "mkdtemp"), (os, "chmod"), (os, "rename"), (shutil, "rmtree")):
            patch.setattr(module, name, dying(getattr(module, name)))
        yield calls


def test_a_kill_at_every_step_of_a_replacement_loses_nothing(tmp_path, monkeypatch):
    path = tmp_path / "model"
    aside = tmp_path / ".model.replaced"
    step = 0
    while True:
        step += 1
        shutil.rmtree(tmp_path)
        tmp_path.mkdir()
        path.mkdir()
        write_tree(path, OLD)
        try:
            with killed_at(monkeypatch, step):
                replace_with(path, NEW)
        except Killed:
            pass
        else:
            assert step > 4, "a replacement takes mkdtemp, chmod, two renames and an rmtree"
            assert read_tree(path) == NEW and not aside.exists()
            break
        # killed: a complete folder, old or new, is at the path, or the old one is aside and nothing at the path
        at_path, at_aside = read_tree(path), read_tree(aside)
        assert at_path in (OLD, NEW) or (at_path is None and at_aside == OLD), f"killed at step {step}"
        assert OLD in (at_path, at_aside) or at_path == NEW, f"killed at step {step}: the old folder is lost"
        new_made_it = at_path == NEW
        # the next run that fails still finds the folder in place and settles the aside one
        with pytest.raises(RuntimeError), atomic_folder(path):
            raise RuntimeError("the next run fails too")
        assert read_tree(path) == (NEW if new_made_it else OLD), f"killed at step {step}"
        assert not aside.exists()
        replace_with(path, NEWER)
        assert read_tree(path) == NEWER and not aside.exists()


def test_a_leftover_aside_folder_is_put_back_by_the_next_call(tmp_path):
    path = tmp_path / "model"
    aside = tmp_path / ".model.replaced"
    aside.mkdir()
    write_tree(aside, OLD)  # a run killed between its renames
    with pytest.raises(ValueError), atomic_folder(path) as tmp:
        assert read_tree(path) == OLD, "the old folder is back before the new one is built"
        write_tree(tmp, NEW)
        raise ValueError("the new run fails")
    assert read_tree(path) == OLD and not aside.exists()


def test_a_leftover_aside_folder_is_deleted_when_the_new_one_made_it_in(tmp_path):
    path = tmp_path / "model"
    aside = tmp_path / ".model.replaced"
    for folder, files in ((path, NEW), (aside, OLD)):  # a run killed while deleting the old folder
        folder.mkdir()
        write_tree(folder, files)
    replace_with(path, NEWER)
    assert read_tree(path) == NEWER and not aside.exists()


def test_an_error_between_the_renames_puts_the_old_folder_back_at_once(tmp_path, monkeypatch):
    path = tmp_path / "model"
    path.mkdir()
    write_tree(path, OLD)
    rename = os.rename

    def refuse_renaming_in(src, dst):
        if Path(src).name.startswith(".model-"):  # the new folder, built in a temporary sibling
            raise OSError(errno.EIO, "I/O error", str(dst))
        rename(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", refuse_renaming_in)
        with pytest.raises(OSError, match="I/O error"):
            replace_with(path, NEW)
    assert read_tree(path) == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_error_in_the_body_leaves_the_old_folder_and_no_temporary_one(tmp_path):
    path = tmp_path / "model"
    path.mkdir()
    write_tree(path, OLD)
    with pytest.raises(KeyError), atomic_folder(path) as tmp:
        write_tree(tmp, NEW)
        raise KeyError("half-way")
    assert read_tree(path) == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_saved_folders_and_files_get_the_usual_modes(tmp_path, mask):
    with umask(mask):
        replace_with(tmp_path / "fresh", NEW)
        (tmp_path / "old").mkdir()
        replace_with(tmp_path / "old", NEW)
        atomic_write_lines(tmp_path / "lines.jsonl", ["{}"])
    for folder in ("fresh", "old"):
        assert stat.S_IMODE((tmp_path / folder).stat().st_mode) == 0o777 & ~mask, folder
    assert stat.S_IMODE((tmp_path / "lines.jsonl").stat().st_mode) == 0o666 & ~mask


def test_check_writable_accepts_a_writable_place_and_leaves_nothing_behind(tmp_path):
    (tmp_path / "existing").mkdir()
    for target, folder in (
        ("out.jsonl", False),
        ("missing/parents/out.safetensors", False),
        ("existing", True),
        ("new-folder", True),
    ):
        assert check_writable(tmp_path / target, folder=folder) == tmp_path / target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    assert list((tmp_path / "existing").iterdir()) == []


@pytest.mark.parametrize(
    ("target", "folder", "message"),
    [
        ("a-file/out.jsonl", False, "a-file is a file, not a folder"),
        ("a-file/deeper/out", True, "a-file is a file, not a folder"),
        ("a-folder", False, "is a folder; expected a file"),
        ("a-file", True, "exists and is not a folder"),
    ],
)
def test_check_writable_names_the_path_and_the_reason(tmp_path, target, folder, message):
    (tmp_path / "a-file").write_text("user data")
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(NotWritableError, match=message) as error:
        check_writable(tmp_path / target, folder=folder)
    assert str(error.value).startswith(f"{tmp_path / target}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder"]
    assert (tmp_path / "a-file").read_text() == "user data"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(NotWritableError, match=r"cannot write in .*locked \(Permission denied\)"):
            check_writable(locked / "sub" / "out.jsonl")
    finally:
        locked.chmod(0o755)


def test_check_writable_reports_the_reason_the_system_gives(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(NotWritableError, match=r"out\.jsonl: cannot write in .* \(Read-only file system\)"):
        check_writable(tmp_path / "out.jsonl")

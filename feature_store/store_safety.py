"""What a store write may replace or delete: only files msaflow recognises as a store's, and its
own temporaries.

``write_dataset`` (``feature_store.parquet_io``) writes into a temporary directory beside the target
and hands it to ``_replace_dir``; ``check_target`` raises the refusal it would raise, before the
costly work; ``clean_stale_temporaries`` cleans what killed writes left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from msaflow.atomic import writer_tag
from msaflow.errors import DataError
from msaflow.feature_store.datatypes import _PLAIN_NAME, MANIFEST, SPLITS

# A temporary directory is stale when its writer is gone (same host, dead pid) or this old.
STALE_AFTER_S = 24 * 3600

_writer_tag = writer_tag  # names a temporary directory after its writer (clean_stale_temporaries)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_file_names(directory: str | Path) -> set[str] | None:
    """The names in ``directory`` that make up a store msaflow wrote there (``manifest.json`` and
    the split files it lists, each a regular file), or None when it holds no manifest of ours.

    Ours means: valid JSON, an object with every field msaflow writes, an integer ``schema_version``
    (old versions count: they are replaced) and plain file names under ``files``."""
    root = Path(directory)
    mpath = root / MANIFEST
    if mpath.is_symlink() or not mpath.is_file():
        return None
    try:
        d = json.loads(mpath.read_text())
    except (OSError, ValueError):
        return None
    required = (
        "schema_version",
        "name",
        "source",
        "task",
        "label_kind",
        "label_range",
        "modalities",
        "splits",
        "files",
    )
    if (
        not isinstance(d, dict)
        or any(k not in d for k in required)
        or not isinstance(d["files"], dict)
        or not isinstance(d["schema_version"], int)
        or isinstance(d["schema_version"], bool)
    ):
        return None
    names = {MANIFEST}
    for entry in d["files"].values():
        fname = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(fname, str) or not _PLAIN_NAME.fullmatch(fname):
            return None
        p = root / fname
        if p.is_file() and not p.is_symlink():
            names.add(fname)
    return names


def check_target(
    out_dir: str | Path, split_names: Iterable[str] = SPLITS, *, force: bool = False
) -> None:
    """Raise the DataError ``write_dataset`` would raise for this target, before the costly work."""
    _plan(Path(os.path.abspath(out_dir)), {MANIFEST, *(f"{s}.parquet" for s in split_names)}, force)


def _plan(out: Path, new_names: set[str], force: bool) -> tuple[str, set[str]]:
    """How to write ``out``: ``("new" | "store" | "into", recognised store files)``, or
    DataError."""
    if not os.path.lexists(out):
        return "new", set()
    if not out.is_dir():
        raise DataError(
            out, "out", "a directory for the store (this path is a file); choose a fresh path"
        )
    entries = set(os.listdir(out))
    if not entries:
        return "new", set()  # an empty directory is replaced by the new one
    ours = store_file_names(out)
    if ours is not None:
        taken = sorted((entries - ours) & new_names)
        if taken:
            raise DataError(
                out,
                "out",
                f"room for the new store's files; {taken[0]!r} there is not the "
                "old store's and is never overwritten: move it, or choose a fresh path",
            )
        return "store", ours
    if not force:
        example = sorted(entries)[0]
        raise DataError(
            out,
            "out",
            f"an empty directory or a store msaflow wrote; it holds {len(entries)} "
            f"entries (e.g. {example!r}) and no msaflow manifest.json: choose a fresh path, or "
            "pass --force to add the store's files beside them (nothing is deleted)",
        )
    taken = sorted(entries & new_names)
    if taken:
        raise DataError(
            out,
            "out",
            f"--force adds files but never overwrites; {taken[0]!r} exists there "
            "and is not an msaflow store's: choose a fresh path",
        )
    return "into", set()


def _remove_store_files(directory: Path, names: set[str] | None) -> None:
    """Delete ``names`` (None: the files msaflow writes, manifest.json and *.parquet) from
    ``directory`` if they are regular files, then the directory if that left it empty."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        p = directory / entry
        mine = (
            entry in names
            if names is not None
            else (entry == MANIFEST or entry.endswith(".parquet"))
        )
        if mine and p.is_file() and not p.is_symlink():
            p.unlink()
    with contextlib.suppress(OSError):  # something else is in there: not ours to delete
        directory.rmdir()


def _move_new(src: Path, dst: Path) -> None:
    """Move without ever overwriting: a hard link fails if ``dst`` exists (rename would replace
    it)."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise DataError(
            dst.parent,
            "out",
            f"{dst.name!r} to be free (it appeared during the write); nothing was overwritten",
        ) from None
    except OSError:  # no hard links on this filesystem
        if os.path.lexists(dst):
            raise DataError(
                dst.parent, "out", f"{dst.name!r} to be free; nothing was overwritten"
            ) from None
        os.rename(src, dst)
        return
    src.unlink()


def _carry_over(old: Path, out: Path, recognised: set[str]) -> None:
    """Move everything in ``old`` that is not the old store's into the new store directory
    ``out``."""
    for entry in os.listdir(old):
        if entry in recognised or os.path.lexists(out / entry):
            continue
        if (old / entry).is_dir() and not (old / entry).is_symlink():
            os.rename(old / entry, out / entry)
        else:
            _move_new(old / entry, out / entry)


def _replace_dir(tmp: Path, out: Path, new_names: set[str], force: bool) -> None:
    """Put the complete store in ``tmp`` at ``out``.

    New or empty target: one rename. A store of ours: ``out`` -> ``.old``, ``tmp`` -> ``out``, then
    what else was in the folder moves into the new one and only the old store's files are deleted
    (a kill between the renames leaves the old store at ``.old``; the next write puts it back).
    A foreign folder with ``force``: the files are hard-linked in, manifest last, never overwriting.
    """
    kind, recognised = _plan(out, new_names, force)  # again: the folder may have changed meanwhile
    if kind == "new":
        os.replace(tmp, out)
        _fsync_dir(out.parent)
        return
    if kind == "into":
        moved = []
        try:
            for fname in sorted(new_names - {MANIFEST}) + [MANIFEST]:
                _move_new(tmp / fname, out / fname)
                moved.append(fname)
        except BaseException:
            for fname in moved:  # roll back only what this write added
                (out / fname).unlink(missing_ok=True)
            raise
        _fsync_dir(out)
        tmp.rmdir()
        return
    old = out.parent / f".{out.name}.old-{_writer_tag()}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    _fsync_dir(out.parent)
    _carry_over(old, out, recognised)
    _remove_store_files(old, recognised)


def clean_stale_temporaries(out_dir: str | Path) -> list[Path]:
    """Clean what killed writes to ``out_dir`` left beside it; returns the directories handled.

    Only directories named like msaflow's own (``.NAME.tmp-HOST-PID-TID`` / ``.NAME.old-...``) whose
    writer is gone: same host and a dead pid (or a finished thread of this process), or older than
    ``STALE_AFTER_S`` (another host, or a reused pid). In them only msaflow's file names are deleted
    (``manifest.json``, ``*.parquet``); anything else stays. A ``.old`` directory is the previous
    store: put back at ``out_dir`` if nothing is there, else its other entries move into the store.
    """
    out = Path(os.path.abspath(out_dir))
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-([A-Za-z0-9.]+)-(\d+)-(\d+)")
    try:
        entries = sorted(os.listdir(out.parent))
    except OSError:
        return []
    host = _writer_tag().split("-")[0]
    handled = []
    for entry in entries:
        m = pattern.fullmatch(entry)
        path = out.parent / entry
        if not m or path.is_symlink() or not path.is_dir():
            continue
        kind, owner, pid, tid = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue
        if owner == host and pid == os.getpid():
            gone = tid not in {t.ident for t in threading.enumerate()}
        else:
            gone = owner == host and not _pid_alive(pid)
        if not (gone or age > STALE_AFTER_S):
            continue
        if kind == "tmp":
            _remove_store_files(path, None)
        elif not os.path.lexists(out) and store_file_names(path) is not None:
            os.replace(path, out)
        else:
            recognised = store_file_names(path) or set()
            if out.is_dir():
                _carry_over(path, out, recognised)
            _remove_store_files(path, recognised)
        handled.append(path)
    return handled


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or unknown: assume alive
    return True

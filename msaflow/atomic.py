"""Writes that leave a file whole or not at all: the one way msaflow replaces a file.

A temporary beside the target, named after its writer (``.NAME.tmp-HOST-PID-THREAD``), is written,
flushed and renamed over the target. Threads of one process (a flow's workers) each get their own
temporary, so two writers of one path never rename each other's file away; the last rename wins
and the target is always one writer's whole content.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path


def writer_tag() -> str:
    """``host-pid-thread``: names a temporary after its writer, so a later write can tell whether
    that writer is gone (``feature_store.store_safety.clean_stale_temporaries``)."""
    host = re.sub(r"[^A-Za-z0-9.]", "", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}-{threading.get_ident()}"


def temp_path(path: str | Path) -> Path:
    """This writer's temporary for ``path`` (hidden, beside it, so the rename stays on one disk)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{writer_tag()}")


@contextlib.contextmanager
def atomic_target(path: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary to write; on a clean exit it replaces ``path``, on an error it goes.

    ``durable`` fsyncs the file before the rename (checkpoints: a power cut keeps the old one)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | Path, data: bytes | str, *, durable: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` whole or not at all."""
    with atomic_target(path, durable=durable) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)

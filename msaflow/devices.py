"""Which device a computation runs on: ``auto`` resolution, and one CUDA device per concurrent
training.

``auto`` means CUDA, then Apple's MPS, then the CPU (the order of ``tasks.train.select_device``).

A process that trains several runs at once (the pipeline's thread pool, ``reproduce --workers``)
would put every ``auto`` run on ``cuda:0``. ``lease_device`` gives each concurrent training its own
``cuda:k`` instead: the least-loaded slot that no other training holds, returned when the training
ends. A slot is held through an exclusive, non-blocking ``flock`` on a per-GPU lock file, so the
trainings of *several processes* of one user on one machine (a process worker running two flow runs)
also spread; the kernel drops a dead process's lock, so no slot leaks. Slots are the visible
devices: a process started with ``CUDA_VISIBLE_DEVICES=1`` sees one GPU and leases nothing (torch
maps its ``cuda:0`` to GPU 1). Lock files are named after the physical ids, so processes that see
different sets of two or more GPUs (``0,1`` and ``1,2``) still exclude each other on GPU 1.

Imports nothing from the project (a ground module): ``feature_store`` and ``tasks`` both use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

try:  # POSIX; elsewhere slots are coordinated within the process only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# The Prefect tag of a training that runs on CUDA; ``msaflow serve --setup-pool`` gives it a
# concurrency limit of one task per GPU
GPU_TAG = "gpu"
LOCK_DIR_ENV = "MSAFLOW_DEVICE_LOCKS"  # where the per-GPU lock files live (default: a temp folder)


def cuda_count() -> int:
    """CUDA devices this process sees (0 without CUDA); ``CUDA_VISIBLE_DEVICES`` applies."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def auto_device() -> str:
    """``cuda``, else ``mps``, else ``cpu``: what ``auto`` resolves to on this machine."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def resolve(preference: str) -> str:
    """The device a preference (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``) names here."""
    return auto_device() if preference == "auto" else preference


def uses_cuda(preference: str) -> bool:
    """Whether a run with this device preference trains on a GPU (what the ``gpu`` tag marks)."""
    return resolve(preference).startswith("cuda")


def _physical_ids(n: int) -> list[str]:
    """The physical id of each visible device: ``CUDA_VISIBLE_DEVICES``' entries, else 0..n-1."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    visible = [v for v in visible if v]
    ids = visible[:n] if len(visible) >= n else [str(k) for k in range(n)]
    return [re.sub(r"[^A-Za-z0-9._-]", "_", i) for i in ids]


def _lock_dir() -> Path | None:
    """The folder of the lock files, private to this user; None where it cannot be trusted."""
    uid = getattr(os, "getuid", lambda: 0)()
    folder = Path(
        os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"msaflow-devices-{uid}"
    )
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if folder.stat().st_uid != uid:  # someone else's folder in /tmp: do not lock through it
            return None
    except OSError:
        return None
    return folder


class DeviceSlots:
    """Leases of the visible CUDA devices, one per concurrent training (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.load: Counter[int] = Counter()  # device index -> trainings of this process on it

    def _try_hold(self, physical_id: str, folder: Path | None) -> tuple[bool, IO[bytes] | None]:
        """(free, the open file whose exclusive lock holds the slot). Free with no file where no
        lock files can be used: then the in-process load alone decides."""
        if fcntl is None or folder is None:
            return True, None
        try:
            fh = open(folder / f"cuda-{physical_id}.lock", "ab")  # noqa: SIM115 - the lease holds it
        except OSError:
            return True, None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another lease, in this process or another, holds this GPU
            fh.close()
            return False, None
        return True, fh

    @contextlib.contextmanager
    def lease(self, preference: str) -> Iterator[str]:
        """The device this training uses, held until the ``with`` block ends.

        ``auto`` or ``cuda`` with two or more visible GPUs: ``cuda:k``, the least-loaded slot no
        other lease holds (every slot held: the least-loaded one, shared). Anything else (an
        explicit ``cuda:1``, ``cpu``, ``mps``, or fewer than two GPUs) is returned unchanged; an
        explicit ``cuda:k`` still counts as load on k, so ``auto`` runs avoid it in this process.
        """
        pooled = preference in ("auto", "cuda")
        n = cuda_count() if pooled or preference.startswith("cuda:") else 0
        index: int | None = None
        held: IO[bytes] | None = None
        if pooled and n >= 2:
            ids, folder = _physical_ids(n), _lock_dir()
            with self._lock:
                order = sorted(range(n), key=lambda k: (self.load[k], k))
                for k in order:
                    free, held = self._try_hold(ids[k], folder)
                    if free:
                        index = k
                        break
                if index is None:  # more trainings than GPUs: share the least-loaded one
                    index = order[0]
                self.load[index] += 1
            device = f"cuda:{index}"
        else:
            device = preference
            if n >= 2 and (m := re.fullmatch(r"cuda:(\d+)", preference)):
                index = int(m.group(1))
                with self._lock:
                    self.load[index] += 1
        try:
            yield device
        finally:
            if index is not None:
                with self._lock:
                    self.load[index] -= 1
            if held is not None:
                held.close()  # closing the file releases its lock


SLOTS = DeviceSlots()


def lease_device(preference: str) -> contextlib.AbstractContextManager[str]:
    """``SLOTS.lease``: this process's device slot for one training."""
    return SLOTS.lease(preference)


@contextlib.contextmanager
def on_device(device: str) -> Iterator[None]:
    """Make ``device`` (``cuda:k``) the calling thread's current CUDA device for the block, so
    code that says plain ``cuda`` (``select_device("auto")``, autocast, memory figures) means it.
    The current device is per thread: concurrent trainings in a thread pool do not interfere.
    Anything but a visible ``cuda:k`` changes nothing (``select_device`` then says what is
    wrong with it)."""
    m = re.fullmatch(r"cuda:(\d+)", device)
    if m is None or int(m.group(1)) >= cuda_count():
        yield
        return
    import torch

    with torch.cuda.device(int(m.group(1))):
        yield

"""Device slots: concurrent trainings on a multi-GPU machine each lease their own ``cuda:k``; a
slot comes back when its training ends; explicit devices, one GPU and no GPU change nothing.

No GPU here: the CUDA device count is faked (``torch.cuda.is_available`` / ``device_count``);
the locks are real ``flock``s in a per-test folder, so other processes of the machine never
interfere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from msaflow import devices
from msaflow.devices import (
    LOCK_DIR_ENV,
    DeviceSlots,
    auto_device,
    on_device,
    resolve,
    uses_cuda,
)

ROOT = Path(__file__).resolve().parents[2]


def fake_gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


@pytest.fixture
def locks(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "locks"
    monkeypatch.setenv(LOCK_DIR_ENV, str(folder))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return folder


def _concurrent_leases(slots: DeviceSlots, preferences: list[str]) -> list[str]:
    """Each preference leased in its own thread, all held at once (a barrier) before any ends."""
    barrier = threading.Barrier(len(preferences), timeout=30)

    def hold(preference: str) -> str:
        with slots.lease(preference) as device:
            barrier.wait()  # every lease is held now
            return device

    with ThreadPoolExecutor(len(preferences)) as pool:
        return list(pool.map(hold, preferences))


@pytest.mark.parametrize("preference", ["auto", "cuda"])
def test_two_concurrent_trainings_get_different_gpus(monkeypatch, locks, preference):
    fake_gpus(monkeypatch, 2)
    slots = DeviceSlots()
    assert sorted(_concurrent_leases(slots, [preference, preference])) == ["cuda:0", "cuda:1"]
    assert sum(slots.load.values()) == 0  # both returned


def test_a_released_slot_is_leased_again(monkeypatch, locks):
    fake_gpus(monkeypatch, 2)
    slots = DeviceSlots()
    with slots.lease("auto") as first:
        assert first == "cuda:0" and slots.load[0] == 1
    with slots.lease("auto") as again:  # cuda:0 is free again: not pushed to cuda:1
        assert again == "cuda:0"
    with pytest.raises(KeyError), slots.lease("auto"):  # a failed training returns its slot too
        raise KeyError
    with slots.lease("auto") as a, slots.lease("auto") as b:
        assert (a, b) == ("cuda:0", "cuda:1")
    assert sum(slots.load.values()) == 0


def test_more_trainings_than_gpus_share_the_least_loaded(monkeypatch, locks):
    fake_gpus(monkeypatch, 2)
    got = _concurrent_leases(DeviceSlots(), ["auto"] * 3)
    assert sorted(got) == ["cuda:0", "cuda:0", "cuda:1"]


def test_explicit_devices_are_never_changed_and_count_as_load(monkeypatch, locks):
    fake_gpus(monkeypatch, 2)
    slots = DeviceSlots()
    for explicit in ("cuda:1", "cuda:0", "cpu", "mps"):
        with slots.lease(explicit) as device:
            assert device == explicit
    with slots.lease("cuda:0") as pinned, slots.lease("auto") as other:
        # the explicit run keeps cuda:0; the auto run takes the GPU nobody uses
        assert (pinned, other) == ("cuda:0", "cuda:1")
    assert sum(slots.load.values()) == 0


@pytest.mark.parametrize("count, resolved", [(1, "cuda"), (0, "cpu")])
def test_one_gpu_or_none_leaves_the_preference_alone(monkeypatch, locks, count, resolved):
    fake_gpus(monkeypatch, count)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert _concurrent_leases(DeviceSlots(), ["auto", "auto"]) == ["auto", "auto"]
    assert resolve("auto") == resolved
    assert not locks.exists() or not list(locks.iterdir())  # nothing was locked


def test_auto_is_cuda_then_mps_then_cpu(monkeypatch):
    fake_gpus(monkeypatch, 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert auto_device() == "cuda" and uses_cuda("auto")
    fake_gpus(monkeypatch, 0)
    assert auto_device() == "mps" and not uses_cuda("auto")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert auto_device() == "cpu" and not uses_cuda("auto") and uses_cuda("cuda:1")


def test_lock_files_are_named_after_the_physical_gpus(monkeypatch, locks):
    fake_gpus(monkeypatch, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    with DeviceSlots().lease("auto") as a, DeviceSlots().lease("auto") as b:
        # two allocators (as in two processes) still exclude each other through the lock files
        assert {a, b} == {"cuda:0", "cuda:1"}
        assert sorted(p.name for p in locks.iterdir()) == ["cuda-5.lock", "cuda-7.lock"]


HOLDER = """
import sys, torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 2
from msaflow.devices import lease_device
with lease_device("auto") as device:
    print(device, flush=True)
    sys.stdin.readline()  # hold the lease until told (or killed)
"""


def test_another_process_lease_is_respected_and_freed_when_it_dies(monkeypatch, locks):
    """A process worker running two flow runs: each process's training gets its own GPU, and a
    killed process's slot is free again (the kernel drops its lock)."""
    fake_gpus(monkeypatch, 2)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout.readline().strip() == "cuda:0"
        with devices.SLOTS.lease("auto") as device:
            assert device == "cuda:1"  # cuda:0 is the other process's
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with devices.SLOTS.lease("auto") as device:
        assert device == "cuda:0"


def test_on_device_makes_a_visible_gpu_current_and_leaves_the_rest(monkeypatch):
    entered = []

    class Current:  # stands in for torch.cuda.device, which a CPU build cannot enter
        def __init__(self, index: int):
            self.index = index

        def __enter__(self):
            entered.append(self.index)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", Current)
    fake_gpus(monkeypatch, 2)
    for device in ("cuda:1", "cuda:2", "cuda", "auto", "cpu"):  # cuda:2 is not visible
        with on_device(device):
            pass
    assert entered == [1]
    fake_gpus(monkeypatch, 0)
    with on_device("cuda:1"):  # no CUDA: select_device raises its ConfigError, not torch
        pass
    assert entered == [1]

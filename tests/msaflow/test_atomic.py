"""msaflow.atomic: one writer's whole content or the old file, never a half-written one."""

import threading

import pytest

from msaflow.atomic import atomic_target, atomic_write, temp_path


def test_threads_writing_one_path_never_collide(tmp_path):
    """Each thread has its own temporary: eight writers of one file all succeed, and the file is
    one writer's whole content (with one temporary per process, a rename lost its file)."""
    target, errors = tmp_path / "best.pt", []
    barrier = threading.Barrier(8)

    def write(i: int) -> None:
        barrier.wait()
        try:
            for _ in range(20):
                atomic_write(target, bytes([i]) * 100_000, durable=True)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    data = target.read_bytes()
    assert len(data) == 100_000 and len(set(data)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporaries left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_target(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_the_temporary_is_hidden_beside_the_target_and_names_its_thread(tmp_path):
    tmp = temp_path(tmp_path / "x.json")
    assert tmp.parent == tmp_path and tmp.name.startswith(".x.json.tmp-")
    assert tmp.name.endswith(f"-{threading.get_ident()}")

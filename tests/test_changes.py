"""The key-change counter beside a SQLite key store (``flask_tokenreq/keys/changes.py``).

Its use by the key store (a valid cache costs no read, a change is seen at
once, a half-done change) is tested in ``test_keys_sql.py``, and across
gunicorn workers in ``test_keys_gunicorn.py``.
"""

from __future__ import annotations

import multiprocessing
import stat
import threading
from pathlib import Path

import pytest

from flask_tokenreq.keys.changes import ChangeCounter, supported

CHANGES = 150


def change_many(path: str, n: int) -> None:
    """``n`` changes through a counter of this process's own (a worker's)."""
    counter = ChangeCounter(path)
    try:
        for _ in range(n):
            with counter.changing():
                if counter.read() % 2 != 1:
                    raise AssertionError("the counter is not odd during a change")
    finally:
        counter.close()


def test_a_new_counter_is_an_even_zero_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite3-tokenreq-changes"
    counter = ChangeCounter(str(path))
    assert counter.read() == 0
    assert path.stat().st_size == 8
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    counter.close()
    assert supported()  # the platforms CI runs on: 64-bit


def test_a_change_is_odd_while_it_runs_and_two_higher_after_it(tmp_path: Path) -> None:
    path = str(tmp_path / "c")
    counter, reader = ChangeCounter(path), ChangeCounter(path)
    with counter.changing():
        assert reader.read() == 1
    assert reader.read() == 2
    with pytest.raises(RuntimeError), counter.changing():
        raise RuntimeError("the change failed")
    assert reader.read() == 4  # even again: readers only read the database once more
    counter.close()
    reader.close()


def test_changes_from_several_processes_and_threads_are_never_lost(tmp_path: Path) -> None:
    path = str(tmp_path / "c")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=change_many, args=(path, CHANGES)) for _ in range(3)]
    threads = [threading.Thread(target=change_many, args=(path, CHANGES)) for _ in range(2)]
    for worker in [*procs, *threads]:
        worker.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    for t in threads:
        t.join(120)
    counter = ChangeCounter(path)
    assert counter.read() == 2 * CHANGES * (len(procs) + len(threads))
    counter.close()


def change_once(counter: ChangeCounter) -> None:
    with counter.changing():
        pass


def test_a_child_forked_during_a_change_waits_for_it_then_changes(tmp_path: Path) -> None:
    """gunicorn --preload: the child inherits the counter, with its thread lock taken
    if a change was in progress; it gets a lock of its own, and the record lock on
    the file still makes it wait for the parent's change to end."""
    counter = ChangeCounter(str(tmp_path / "c"))
    ctx = multiprocessing.get_context("fork")
    with counter.changing():
        child = ctx.Process(target=change_once, args=(counter,))
        child.start()
    child.join(60)
    assert child.exitcode == 0
    assert counter.read() == 4
    counter.close()

"""Group commit: transitions of several threads share one COMMIT; each returns only once durable."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from conftest import wait_for

from gateway.state import groupcommit
from gateway.state.groupcommit import GroupCommit


@pytest.fixture
def database(tmp_path):
    db = sqlite3.connect(tmp_path / "t.db", isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (x INTEGER UNIQUE)")
    yield tmp_path / "t.db", db
    db.close()


def committed(path) -> list[int]:
    other = sqlite3.connect(path)
    try:
        return sorted(x for (x,) in other.execute("SELECT x FROM t"))
    finally:
        other.close()


def test_waiting_transitions_share_one_commit_and_a_failing_one_is_rolled_back_alone(database):
    path, db = database
    hold = threading.Event()
    commits = GroupCommit(db, threading.RLock(), before_commit=hold.wait)
    results: dict[int, object] = {}
    entered: list[int] = []

    def transition(value: int) -> None:
        try:
            with commits.transaction() as connection:
                connection.execute("INSERT INTO t VALUES (?)", (value,))
                entered.append(value)
                if value == 3:
                    raise ValueError("this one fails")
            results[value] = committed(path)
        except ValueError as error:
            results[value] = error

    threads = [threading.Thread(target=transition, args=(value,)) for value in range(5)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(entered) == 5 and len(results) == 1, message="all five ran, the failed one is back")
    assert commits._batch == 1, "all five joined one batch"
    assert committed(path) == [], "nothing is durable before the commit, and nobody has returned but the failure"
    hold.set()
    for thread in threads:
        thread.join(10)
    assert isinstance(results.pop(3), ValueError)
    assert all(seen == [0, 1, 2, 4] for seen in results.values()), "each returned once all four were durable"
    assert commits._committed == 1, "one COMMIT for the batch"
    commits.close()


def test_a_failed_commit_is_raised_in_every_thread_of_the_batch_and_nothing_is_kept(database):
    path, db = database
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE child (parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
    hold = threading.Event()
    commits = GroupCommit(db, threading.RLock(), before_commit=hold.wait)
    errors: dict[str, BaseException | None] = {}
    entered: list[str] = []

    def transition(name: str, sql: str) -> None:
        try:
            with commits.transaction() as connection:
                connection.execute(sql)
                entered.append(name)
            errors[name] = None
        except sqlite3.Error as error:
            errors[name] = error

    good = threading.Thread(target=transition, args=("good", "INSERT INTO t VALUES (1)"))
    bad = threading.Thread(target=transition, args=("bad", "INSERT INTO child VALUES (42)"))  # fails at COMMIT
    good.start()
    bad.start()
    wait_for(lambda: len(entered) == 2, message="both in the batch")
    assert commits._batch == 1
    hold.set()
    good.join(10)
    bad.join(10)
    assert isinstance(errors["good"], sqlite3.IntegrityError) and isinstance(errors["bad"], sqlite3.IntegrityError)
    assert committed(path) == [], "a batch whose COMMIT failed keeps nothing"
    with commits.transaction() as connection:  # the next batch works
        connection.execute("INSERT INTO t VALUES (2)")
    assert committed(path) == [2]
    commits.close()


def test_a_lazy_transition_is_committed_with_the_next_batch(database):
    path, db = database
    commits = GroupCommit(db, threading.RLock())
    with commits.transaction(wait=False) as connection:
        connection.execute("INSERT INTO t VALUES (7)")
    wait_for(lambda: committed(path) == [7], message="the lazy transition committed by the writer")
    commits.close()


def test_a_lazy_transition_rides_the_next_waited_commit_instead_of_paying_its_own(database, monkeypatch):
    path, db = database
    monkeypatch.setattr(groupcommit, "LAZY_SECONDS", 600)  # alone, it waits for company that long
    commits = GroupCommit(db, threading.RLock())
    with commits.transaction(wait=False) as connection:
        connection.execute("INSERT INTO t VALUES (7)")
    committing = threading.Event()
    commits._before_commit = committing.set
    assert not committing.wait(0.5), "a lazy step alone does not make the writer commit"
    with commits.transaction() as connection:
        connection.execute("INSERT INTO t VALUES (8)")
    assert committed(path) == [7, 8], "both durable once the waited one returns"
    assert commits._committed == 1, "one COMMIT for both"
    commits.close()


def test_waiting_for_a_lazy_transition_later_commits_it_at_once(database, monkeypatch):
    path, db = database
    monkeypatch.setattr(groupcommit, "LAZY_SECONDS", 600)
    commits = GroupCommit(db, threading.RLock())
    with commits.transaction(wait=False) as connection:
        connection.execute("INSERT INTO t VALUES (7)")
    batch = commits.durable()
    waiter = threading.Thread(target=commits.wait_for, args=(batch,))
    waiter.start()
    waiter.join(30)
    assert not waiter.is_alive(), "wait_for a lazy batch makes the writer commit it, without LAZY_SECONDS"
    assert committed(path) == [7]
    commits.close()


def test_a_lazy_transition_whose_commit_failed_is_told_so_however_many_batches_came_after(database):
    """An upload worker waits for the take it made ahead only before sending its files, after other
    workers' batches: a failure forgotten meanwhile would let it send files it never took."""
    path, db = database
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE child (parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
    commits = GroupCommit(db, threading.RLock())
    with commits.transaction(wait=False) as connection:
        connection.execute("INSERT INTO child VALUES (42)")  # fails at COMMIT
    taken_ahead = commits.durable()
    with pytest.raises(sqlite3.IntegrityError), commits.transaction() as connection:  # the lazy one's batch
        connection.execute("INSERT INTO t VALUES (0)")
    for value in range(1, 101):  # the other workers go on meanwhile
        with commits.transaction() as connection:
            connection.execute("INSERT INTO t VALUES (?)", (value,))
    with pytest.raises(sqlite3.Error):
        commits.wait_for(taken_ahead)
    commits.close()

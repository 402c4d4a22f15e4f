"""The witness's storage: the latest cosigned checkpoint per origin, in one SQLite file.

Checking a submission against the stored size and storing the new checkpoint happen in
one `BEGIN IMMEDIATE` transaction (and under a process lock), so two concurrent
submissions can never roll the recorded tree back (tlog-witness asks for this).
Validly signed checkpoints that were refused are kept too: they may be evidence that
the log misbehaved.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS latest (
    origin      TEXT PRIMARY KEY,
    tree_size   INTEGER NOT NULL,
    root_hash   BLOB NOT NULL,
    note        TEXT NOT NULL,
    cosigned_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (
    id          INTEGER PRIMARY KEY,
    origin      TEXT NOT NULL,
    old_size    INTEGER NOT NULL,
    tree_size   INTEGER NOT NULL,
    status      INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    note        TEXT NOT NULL,
    at          INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Latest:
    """The latest checkpoint cosigned for an origin (its note carries our cosignature)."""

    tree_size: int
    root_hash: bytes
    note: str


class Store:
    """One SQLite file; safe to share between threads of one process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A serialised read-check-write; committed when the block ends without error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def latest(self, origin: str) -> Latest | None:
        with self._lock:
            return Transaction(self._db).latest(origin)

    def refusals(self, origin: str) -> list[tuple[int, int, int, str]]:
        """(old size, tree size, status, reason) of refused submissions, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT old_size, tree_size, status, reason FROM refused WHERE origin = ?"
                " ORDER BY id",
                (origin,),
            ).fetchall()
        return [(int(a), int(b), int(c), str(d)) for a, b, c, d in rows]


class Transaction:
    """Reads and writes inside `Store.transaction`."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def latest(self, origin: str) -> Latest | None:
        row = self._db.execute(
            "SELECT tree_size, root_hash, note FROM latest WHERE origin = ?", (origin,)
        ).fetchone()
        return None if row is None else Latest(int(row[0]), bytes(row[1]), str(row[2]))

    def save(self, origin: str, tree_size: int, root_hash: bytes, note: str, at: int) -> None:
        self._db.execute(
            "INSERT INTO latest (origin, tree_size, root_hash, note, cosigned_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET"
            " tree_size = excluded.tree_size, root_hash = excluded.root_hash,"
            " note = excluded.note, cosigned_at = excluded.cosigned_at",
            (origin, tree_size, root_hash, note, at),
        )

    def refuse(
        self,
        origin: str,
        old_size: int,
        tree_size: int,
        status: int,
        reason: str,
        note: str,
        at: int,
    ) -> None:
        self._db.execute(
            "INSERT INTO refused (origin, old_size, tree_size, status, reason, note, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (origin, old_size, tree_size, status, reason, note, at),
        )

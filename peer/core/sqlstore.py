"""A durable ExampleStore: received batches in SQLite, committed before they are acknowledged.

Same interface as peer.store.ExampleStore, so a Peer uses either. A batch id `(sender, round,
seq)` is the primary key: a retried batch is acknowledged and not stored twice, also across a
restart of the peer process. The validation gate's judgements are kept beside them, so examples
it refused stay refused after a restart.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

from peer.core.blob import ExampleBatch
from peer.core.store import ExampleStore
from peer.faults import fault

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    sender TEXT NOT NULL, round INTEGER NOT NULL, seq INTEGER NOT NULL,
    receiver TEXT NOT NULL, classes TEXT NOT NULL, features TEXT NOT NULL,
    x BLOB NOT NULL, x_dtype TEXT NOT NULL, x_shape TEXT NOT NULL,
    y BLOB NOT NULL, y_dtype TEXT NOT NULL,
    distance BLOB NOT NULL, examples INTEGER NOT NULL, levels INTEGER NOT NULL DEFAULT 255,
    proba BLOB,
    PRIMARY KEY (sender, round, seq)
);
CREATE TABLE IF NOT EXISTS judged (
    sender TEXT NOT NULL, round INTEGER NOT NULL, refused TEXT NOT NULL, at INTEGER NOT NULL DEFAULT -1,
    PRIMARY KEY (sender, round)
)
"""


class SqliteExampleStore(ExampleStore):
    """Batches in one SQLite file; `add` returns only after the transaction is committed."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        if "at" not in {row[1] for row in self._db.execute("PRAGMA table_info(judged)")}:  # a store of before `at`
            self._db.execute("ALTER TABLE judged ADD COLUMN at INTEGER NOT NULL DEFAULT -1")
        if "levels" not in {row[1] for row in self._db.execute("PRAGMA table_info(batches)")}:  # before `levels`
            self._db.execute("ALTER TABLE batches ADD COLUMN levels INTEGER NOT NULL DEFAULT 255")
        if "proba" not in {row[1] for row in self._db.execute("PRAGMA table_info(batches)")}:  # before `proba`
            self._db.execute("ALTER TABLE batches ADD COLUMN proba BLOB")
        self._cache: list[ExampleBatch] | None = None

    def add(self, batch: ExampleBatch) -> bool:
        row = (
            batch.sender,
            batch.round,
            batch.seq,
            batch.receiver,
            json.dumps(list(batch.classes)),
            json.dumps(list(batch.features)),
            batch.x.tobytes(),
            batch.x.dtype.name,
            json.dumps(list(batch.x.shape)),
            batch.y.tobytes(),
            batch.y.dtype.name,
            batch.distance.astype(np.float32).tobytes(),
            len(batch),
            batch.levels,
            None if batch.proba is None else batch.proba.tobytes(),
        )
        with self._lock:
            cur = self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO batches (sender, round, seq, receiver, classes, features, x, x_dtype, "
                    "x_shape, y, y_dtype, distance, examples, levels, proba) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    row,
                )
                stored = cur.rowcount == 1
                fault("store")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if stored:
                self._cache = None
            return stored

    def judge(self, sender: str, round: int, refused=(), at: int | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO judged VALUES (?,?,?,?)",
                (sender, int(round), json.dumps(sorted(set(refused))), -1 if at is None else int(at)),
            )

    def forget_judgements(self, after: int) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM judged WHERE at > ?", (int(after),)).rowcount

    def judgements(self) -> dict[tuple[str, int], tuple[str, ...]]:
        with self._lock:
            rows = self._db.execute("SELECT sender, round, refused FROM judged").fetchall()
        return {(s, int(r)): tuple(json.loads(ref)) for s, r, ref in rows}

    def __contains__(self, batch_id) -> bool:
        with self._lock:
            return (
                self._db.execute(
                    "SELECT 1 FROM batches WHERE sender=? AND round=? AND seq=?", tuple(batch_id)
                ).fetchone()
                is not None
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(examples), 0) FROM batches").fetchone()[0])

    def batch_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM batches").fetchone()[0])

    def batches(self) -> list[ExampleBatch]:
        with self._lock:
            if self._cache is None:
                rows = self._db.execute(
                    "SELECT sender, round, seq, receiver, classes, features, x, x_dtype, x_shape, "
                    "y, y_dtype, distance, levels, proba, examples FROM batches ORDER BY sender, round, seq"
                ).fetchall()
                self._cache = [
                    ExampleBatch(
                        s,
                        rcv,
                        int(r),
                        int(q),
                        np.frombuffer(x, dtype=xd).reshape(json.loads(xs)),
                        np.frombuffer(y, dtype=yd),
                        tuple(json.loads(cls)),
                        np.frombuffer(d, dtype=np.float32),
                        tuple(json.loads(feat)),
                        int(lv),
                        None if pr is None else np.frombuffer(pr, np.uint8).reshape(int(n), len(json.loads(cls))),
                    )
                    for s, r, q, rcv, cls, feat, x, xd, xs, y, yd, d, lv, pr, n in rows
                ]
            return list(self._cache)

    def close(self) -> None:
        with self._lock:
            self._db.close()

"""The lab manager's own file: check results and abuse flags, in SQLite.

Results and flags must outlive the service (an instructor reloads the page
after a restart and still sees who is stuck where), so they live here, not in
memory. The reaper keeps nothing here: it needs no memory at all.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    lab TEXT NOT NULL,
    check_id TEXT NOT NULL,
    passed INTEGER NOT NULL,
    time REAL NOT NULL,       -- when the check ran (the student's clock)
    received REAL NOT NULL,   -- when we got it (ours)
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS results_user ON results (user, lab, check_id);
CREATE TABLE IF NOT EXISTS flags (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    server TEXT NOT NULL,
    rule TEXT NOT NULL,
    detail TEXT NOT NULL,
    action TEXT NOT NULL,     -- "flag" or "stop"
    raised REAL NOT NULL,
    cleared REAL              -- set when an instructor dismisses it
);
"""


class Store:
    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # -- check results ------------------------------------------------------
    def add_result(
        self, user: str, lab: str, check_id: str, passed: bool, when: float, message: str = ""
    ) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO results (user, lab, check_id, passed, time, received, message) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (user, lab, check_id, int(passed), when, time.time(), message),
            )
            return cur.lastrowid

    def progress(self, lab: str | None = None) -> list[dict]:
        """Per (user, lab, check): the latest result, attempts, first pass time."""
        where, args = ("WHERE lab = ?", (lab,)) if lab else ("", ())
        rows = self._db.execute(
            f"""SELECT user, lab, check_id, COUNT(*),
                       MAX(time),
                       (SELECT passed || ' ' || message FROM results r2 WHERE r2.user = r.user
                          AND r2.lab = r.lab AND r2.check_id = r.check_id
                          ORDER BY time DESC, id DESC LIMIT 1),
                       MIN(CASE WHEN passed THEN time END)
                FROM results r {where}
                GROUP BY user, lab, check_id ORDER BY lab, check_id, user""",
            args,
        ).fetchall()
        return [
            {
                "user": u,
                "lab": lb,
                "check": c,
                "attempts": n,
                "last_time": t,
                "passed": p.startswith("1"),
                "message": p[2:],
                "first_pass": fp,
            }
            for u, lb, c, n, t, p, fp in rows
        ]

    def count_results(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    # -- abuse flags --------------------------------------------------------
    def open_flag(self, user: str, server: str, rule: str) -> dict | None:
        row = self._db.execute(
            "SELECT id, detail, action, raised FROM flags "
            "WHERE user = ? AND server = ? AND rule = ? AND cleared IS NULL",
            (user, server, rule),
        ).fetchone()
        return (
            None
            if row is None
            else dict(zip(("id", "detail", "action", "raised"), row, strict=True))
        )

    def raise_flag(self, user: str, server: str, rule: str, detail: str, action: str) -> int | None:
        """Record a flag; None if the same flag is already open (raised once)."""
        with self._lock:
            if self.open_flag(user, server, rule):
                return None
            cur = self._db.execute(
                "INSERT INTO flags (user, server, rule, detail, action, raised) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (user, server, rule, detail, action, time.time()),
            )
            return cur.lastrowid

    def clear_flag(self, flag_id: int) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE flags SET cleared = ? WHERE id = ? AND cleared IS NULL",
                (time.time(), flag_id),
            )
            return cur.rowcount == 1

    def flags(self, include_cleared: bool = False) -> list[dict]:
        sql = "SELECT id, user, server, rule, detail, action, raised, cleared FROM flags"
        if not include_cleared:
            sql += " WHERE cleared IS NULL"
        keys = ("id", "user", "server", "rule", "detail", "action", "raised", "cleared")
        return [
            dict(zip(keys, r, strict=True)) for r in self._db.execute(sql + " ORDER BY raised DESC")
        ]

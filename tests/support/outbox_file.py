"""Reading an outbox file from outside the gateway (read-only), as an operator's tool would."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def row_count(path: Path) -> int:
    """Rows in the outbox now; 0 while the file does not exist or cannot be read yet."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    try:
        return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        conn.close()

"""Micro-benchmark of the managed-key hot paths on a SQLite file (not part of `make bench`).

Prints microseconds per call for:

- ``token_revoked`` with a warm cache (one generation read per call): the token guard;
- ``state`` with a warm cache;
- ``get`` (key row + secrets + Fernet decrypt): exchanges and key auth.

Run: ``.venv/bin/python bench/keys_micro.py [N]``
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable

from cryptography.fernet import Fernet

from flask_tokenreq.keys.sql import SqlKeyStore


def per_call_us(call: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 200)):
        call()
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlKeyStore(f"sqlite:///{tmp}/bench.sqlite3", [Fernet.generate_key().decode()])
        store.create_tables()
        store.check()
        key, _ = store.create("bench")
        store.revoke_tokens(key.key_name, ["clientId:someone-else"])
        name = key.key_name
        results = {
            "token_revoked (warm cache)": per_call_us(
                lambda: store.token_revoked(name, "alice", None, 0), n
            ),
            "state (warm cache)": per_call_us(lambda: store.state(name), n),
            "get (row + decrypt)": per_call_us(lambda: store.get(name), n),
        }
        store.close()
    for label, us in results.items():
        print(f"{label:32s} {us:8.1f} us/call")


if __name__ == "__main__":
    main()

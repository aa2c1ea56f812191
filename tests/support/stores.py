"""Test helper: a real on-disk Store with a mutable keyring holder."""

from __future__ import annotations

from chronoshard.shardnode.keys.keyring import Keyring, KeyVersion
from chronoshard.shardnode.node.store import Store


def ring(primary: int, versions: tuple[int, ...], generation: int = 1) -> Keyring:
    """A keyring whose version v has key bytes [v]*32."""
    return Keyring(generation, [KeyVersion(v, "primary" if v == primary else "decrypt-only") for v in versions],
                   {v: bytes([v]) * 32 for v in versions})


class Holder:
    """Mutable keyring reference, as the watcher provides it."""

    def __init__(self, keyring: Keyring | None) -> None:
        self.keyring = keyring

    def __call__(self) -> Keyring | None:
        return self.keyring


def open_store(path, keyring: Keyring | None) -> tuple[Store, Holder]:
    """A Store in ``path`` plus the holder its keyring comes from."""
    holder = Holder(keyring)
    return Store(path, holder), holder


def flip_frame_bit(conn, table: str, key: str, bit: int) -> None:
    """Flip one bit of a stored frame in place (simulated on-disk corruption)."""
    (frame,) = conn.execute("SELECT frame FROM blocks WHERE tbl = ? AND key = ?", (table, key)).fetchone()
    bad = bytearray(frame)
    bad[bit // 8] ^= 1 << (bit % 8)
    conn.execute("UPDATE blocks SET frame = ? WHERE tbl = ? AND key = ?", (bytes(bad), table, key))

"""Per-table zstd dictionaries for the history: sampled from the values the capture seals, trained once a table has
enough of them (``compression.dictionary: true``).

Small values share most of their bytes with their neighbours (field names, formats, prefixes) but zstd cannot see
that one value at a time; a dictionary trained on the table's own values gives it that context. The history store
writes a trained dictionary to its file in a committed transaction *before* it compresses anything with it, so no
frame ever names a dictionary that a crash could lose (history.py). Values sealed earlier keep their codec.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from .codec import CodecError, train_dictionary

TRAIN_SAMPLES = 1000  # values of a table sampled before its dictionary is trained
MAX_SAMPLE_BYTES = 4 * 1024 * 1024  # a table's samples never hold more (large values: fewer samples)
MAX_SAMPLE_VALUE = 64 * 1024  # a value larger than this is left out (it compresses well on its own)
DICT_SIZE = 16 * 1024
RETRY_FACTOR = 4  # after a failed training, wait for this many times more samples
MAX_ATTEMPTS = 3  # then the table goes on without a dictionary (zstd found nothing to learn from its values)


class DictionaryTrainer:
    """Collects sample values per table until a dictionary is due, then trains it. Thread-safe."""

    def __init__(self, enabled: bool, *, samples: int = TRAIN_SAMPLES, size: int = DICT_SIZE,
                 max_bytes: int = MAX_SAMPLE_BYTES) -> None:
        self.enabled = enabled
        self.samples_needed = samples
        self.size = size
        self.max_bytes = max_bytes
        self._samples: dict[str, list[bytes]] = {}
        self._bytes: dict[str, int] = {}
        self._needed: dict[str, int] = {}
        self._done: set[str] = set()
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.failures = 0

    def have(self, tables: Iterable[str]) -> None:
        """Tables that already have a dictionary: nothing is sampled for them."""
        with self._lock:
            self._done.update(tables)

    def offer(self, table: str, value: bytes) -> None:
        """A value the capture sealed; kept as a sample while its table has no dictionary yet."""
        if not self.enabled or not value or len(value) > MAX_SAMPLE_VALUE or table in self._done:
            return
        with self._lock:
            if table in self._done or self._bytes.get(table, 0) + len(value) > self.max_bytes:
                return
            self._samples.setdefault(table, []).append(value)
            self._bytes[table] = self._bytes.get(table, 0) + len(value)

    def due(self) -> list[str]:
        """Tables whose samples are enough to train on (or can grow no more)."""
        with self._lock:
            return [t for t, s in self._samples.items() if t not in self._done and (
                len(s) >= self._needed.get(t, self.samples_needed)
                or self._bytes.get(t, 0) >= self.max_bytes - MAX_SAMPLE_VALUE)]

    def train(self, table: str) -> bytes | None:
        """Train ``table``'s dictionary from its samples; None if zstd cannot (it is tried again after more)."""
        with self._lock:
            samples = list(self._samples.get(table, ()))
        try:
            trained = train_dictionary(samples, self.size)
        except CodecError:
            self.failures += 1
            with self._lock:
                self._attempts[table] = self._attempts.get(table, 0) + 1
                if self._attempts[table] >= MAX_ATTEMPTS:
                    self._done.add(table)
                    self._samples.pop(table, None)
                    self._bytes.pop(table, None)
                    return None
                self._needed[table] = max(len(samples), 1) * RETRY_FACTOR
                keep = samples[len(samples) // 2:]  # room for new samples, not only the old ones
                self._samples[table] = keep
                self._bytes[table] = sum(map(len, keep))
            return None
        return trained

    def trained(self, table: str) -> None:
        """``table`` has its dictionary now: drop its samples and sample it no more."""
        with self._lock:
            self._done.add(table)
            self._samples.pop(table, None)
            self._bytes.pop(table, None)
            self._needed.pop(table, None)

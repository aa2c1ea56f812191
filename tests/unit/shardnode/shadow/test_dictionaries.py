"""Per-table zstd dictionaries: sampled from sealed values, trained when due, committed to the history file before
any frame names them, loaded again at open, exported with the cold segments."""

from __future__ import annotations

import json
import random
import sqlite3

from chronoshard.shardnode.shadow import dictionaries as dmod
from chronoshard.shardnode.shadow.codec import Compressor, dictionary_id
from chronoshard.shardnode.shadow.dictionaries import DictionaryTrainer
from chronoshard.shardnode.shadow.history import HistoryStore

from tests.support.shadow_history import put
from tests.support.stores import Holder, ring

R = ring(1, (1,))


def order(rng: random.Random, n: int) -> bytes:
    """A small JSON record like an application's row: most bytes are field names and formats."""
    return json.dumps({"id": n, "customer": f"customer-{rng.randrange(500):04d}", "status": rng.choice(
        ["new", "paid", "shipped", "delivered"]), "amount": round(rng.uniform(1, 500), 2),
        "currency": "EUR", "note": "standard delivery, no signature required"}).encode()


def _history(tmp_path, enabled: bool = True, samples: int = 200) -> HistoryStore:
    return HistoryStore(tmp_path, Holder(R), Compressor(), DictionaryTrainer(enabled, samples=samples, size=4096))


def _apply_orders(h: HistoryStore, start: int, count: int, table: str = "t") -> dict[int, bytes]:
    """Puts at LSNs start.. (key o{lsn % 97}) in pages of 50; the value written at each LSN."""
    rng = random.Random(start)
    written = {i: order(rng, i) for i in range(start, start + count)}
    for lsn in range(start, start + count, 50):
        h.apply([put(R, i, float(i), table, f"o{i % 97}", written[i]) for i in range(lsn, min(lsn + 50,
                                                                                               start + count))])
    return written


def _stored(h: HistoryStore, lo: int, hi: int) -> float:
    conn = sqlite3.connect(h.path)
    (avg,) = conn.execute("SELECT avg(stored_size) FROM frames WHERE lsn BETWEEN ? AND ?", (lo, hi)).fetchone()
    conn.close()
    return float(avg)


def test_a_table_gets_its_dictionary_once_it_has_enough_samples_and_later_values_shrink(tmp_path):
    h = _history(tmp_path)
    written = _apply_orders(h, 1, 150)
    assert h.dictionaries() == [] and h.compressor.dictionary("t") is None  # 150 < 200 samples
    written |= _apply_orders(h, 151, 450)
    (table, dict_bytes), = h.dictionaries()
    assert table == "t" and h.compressor.dictionary("t") == dictionary_id(dict_bytes)
    assert _stored(h, 400, 600) < 0.75 * _stored(h, 1, 150)  # values sealed with the dictionary are smaller
    # Every version reads back, those sealed before the dictionary and those after.
    for lsn in (1, 150, 300, 600):
        assert h.value_at("t", f"o{lsn % 97}", lsn=lsn).value == written[lsn]
    h.close()


def test_the_dictionary_is_in_the_file_and_a_reopened_store_reads_everything_with_a_fresh_compressor(tmp_path):
    h = _history(tmp_path)
    written = _apply_orders(h, 1, 400)
    h.close()
    again = HistoryStore(tmp_path, Holder(R), Compressor())  # no trainer: dictionaries come from the file
    assert len(again.dictionaries()) == 1 and again.compressor.dictionary("t") is not None
    for lsn in (5, 250, 399):
        assert again.value_at("t", f"o{lsn % 97}", lsn=lsn).value == written[lsn]
    again.close()


def test_disabled_tables_get_no_dictionary_and_tables_train_independently(tmp_path):
    off = _history(tmp_path / "off", enabled=False)
    _apply_orders(off, 1, 400)
    assert off.dictionaries() == []
    off.close()
    h = _history(tmp_path / "on")
    _apply_orders(h, 1, 250, table="a")
    _apply_orders(h, 1000, 100, table="b")
    assert [t for t, _ in h.dictionaries()] == ["a"]  # b has 100 samples, fewer than 200
    h.close()


def test_training_that_fails_is_retried_after_more_samples_and_then_given_up(monkeypatch):
    trainer = DictionaryTrainer(True, samples=10)
    calls = []

    def failing(samples, size):
        calls.append(len(samples))
        raise dmod.CodecError("zstd found nothing to learn")

    monkeypatch.setattr(dmod, "train_dictionary", failing)
    for _ in range(10):
        trainer.offer("t", b"same" * 3)
    assert trainer.due() == ["t"]
    assert trainer.train("t") is None and trainer.due() == []  # waits for 4x the samples now
    for _ in range(35):
        trainer.offer("t", b"same" * 3)
    assert trainer.due() == ["t"]
    assert trainer.train("t") is None
    for _ in range(200):
        trainer.offer("t", b"same" * 3)
    assert trainer.train("t") is None
    assert trainer.due() == [] and len(calls) == dmod.MAX_ATTEMPTS
    trainer.offer("t", b"more")  # given up: nothing is sampled any more
    assert trainer.due() == []


def test_samples_are_bounded_in_bytes_and_large_values_are_left_out():
    trainer = DictionaryTrainer(True, samples=10**6, max_bytes=dmod.MAX_SAMPLE_VALUE * 3)
    trainer.offer("t", bytes(dmod.MAX_SAMPLE_VALUE + 1))
    assert trainer.due() == []
    for _ in range(10):
        trainer.offer("t", bytes(dmod.MAX_SAMPLE_VALUE // 2))
    assert trainer.due() == ["t"]  # full in bytes long before the sample count

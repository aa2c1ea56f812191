"""The audit lines: written off the event loop by the writer thread, none dropped when its queue is full."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from chronoshard.shardnode.auth import audit as audit_mod
from chronoshard.shardnode.auth.audit import WRITER, audit
from chronoshard.shardnode.auth.identity import Identity

CALLER = Identity("system:serviceaccount:shop:app", ("system:serviceaccounts",), "serviceaccount", "token")


class Collect(logging.Handler):
    """Keeps the records it gets; with ``gate`` the first one waits until the gate opens (a stuck sink)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.gate, self.entered = gate, threading.Event()

    def handle(self, record: logging.LogRecord) -> bool:
        # Waits outside the handler's lock, so the caller's own writes are not held up by the test's gate.
        if self.gate is not None and threading.current_thread().name == "chronoshard-audit":
            self.entered.set()
            self.gate.wait(10)
        return super().handle(record)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def sink():
    handlers: list[Collect] = []

    def attach(gate: threading.Event | None = None) -> Collect:
        h = Collect(gate)
        audit_mod.audit_log.addHandler(h)
        handlers.append(h)
        return h

    audit_mod.audit_log.setLevel(logging.INFO)
    yield attach
    for h in handlers:
        audit_mod.audit_log.removeHandler(h)
    audit_mod.audit_log.setLevel(logging.NOTSET)
    WRITER.stop(everyone=True)
    WRITER.full_reported = False


def test_lines_are_written_by_the_writer_thread_with_the_request_time(sink):
    h = sink()
    WRITER.start()
    for i in range(200):
        audit(CALLER, "GET", "/v1/tables/{table}/blocks/{key}", "orders", f"k{i}", 200, "allowed")
    WRITER.stop()
    assert len(h.records) == 200
    assert {r.threadName for r in h.records} == {"chronoshard-audit"}
    first = json.loads(h.records[0].getMessage())
    assert first == {"user": CALLER.user, "via": "token", "method": "GET",
                     "route": "/v1/tables/{table}/blocks/{key}", "table": "orders", "key": "k0", "status": 200,
                     "reason": "allowed"}
    assert [json.loads(r.getMessage())["key"] for r in h.records] == [f"k{i}" for i in range(200)]
    assert all(a.created <= b.created for a, b in zip(h.records, h.records[1:], strict=False))


def test_without_a_writer_the_caller_writes_its_line(sink):
    h = sink()
    audit(None, "GET", "/metrics", None, None, 401, "refused")
    assert len(h.records) == 1 and h.records[0].threadName == threading.current_thread().name
    assert json.loads(h.records[0].getMessage())["user"] is None


def test_a_full_queue_writes_on_the_request_path_counts_and_warns_once(sink, monkeypatch, caplog):
    gate = threading.Event()
    h = sink(gate)
    monkeypatch.setattr(WRITER, "size", 5)
    full: list[int] = []
    WRITER.start()
    try:
        check_full(h, full, caplog)
    finally:
        gate.set()
    WRITER.stop()
    keys = sorted(json.loads(r.getMessage())["key"] for r in h.records)
    assert keys == sorted(["first", *(f"k{i}" for i in range(20))]), "every line arrived, once"


def check_full(h: Collect, full: list[int], caplog: pytest.LogCaptureFixture) -> None:
    audit(CALLER, "GET", "/r", "t", "first", 200, "allowed")
    assert h.entered.wait(5), "the writer thread took the first line"
    with caplog.at_level(logging.WARNING, logger="chronoshard.auth"):
        for i in range(20):
            audit(CALLER, "GET", "/r", "t", f"k{i}", 200, "allowed", on_full=lambda: full.append(1))
    # 5 wait in the queue; the other 15 were written at once by the caller, counted.
    assert len(full) == 15
    assert len(h.records) == 15 and {r.threadName for r in h.records} == {threading.current_thread().name}
    warnings = [r for r in caplog.records if r.name == "chronoshard.auth" and "audit queue full" in r.getMessage()]
    assert len(warnings) == 1


def test_nothing_is_queued_below_info(sink):
    h = sink()
    audit_mod.audit_log.setLevel(logging.WARNING)
    WRITER.start()
    audit(CALLER, "GET", "/r", "t", "k", 200, "allowed")
    WRITER.stop()
    assert h.records == []


def test_a_batch_writes_what_one_record_at_a_time_would(sink):
    import io

    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    batched, single = io.StringIO(), io.StringIO()
    plain = logging.StreamHandler(batched)
    plain.setFormatter(fmt)
    reference = logging.StreamHandler(single)
    reference.setFormatter(fmt)
    quiet = logging.StreamHandler(io.StringIO())
    quiet.setLevel(logging.WARNING)
    collected = sink()  # a handler with its own emit: still called once per record
    audit_mod.audit_log.addHandler(plain)
    audit_mod.audit_log.addHandler(quiet)
    try:
        lines = [(CALLER.user, "token", "GET", "/r", "t", f"k{i}", 200, "allowed") for i in range(700)]
        records = [audit_mod.make_record(f, 1_700_000_000.0 + i / 1000) for i, f in enumerate(lines)]
        audit_mod.write_records(records)
        for r in records:
            reference.handle(r)
    finally:
        audit_mod.audit_log.removeHandler(plain)
        audit_mod.audit_log.removeHandler(quiet)
    assert batched.getvalue() == single.getvalue() and batched.getvalue().count("\n") == 700
    assert len(collected.records) == 700 and quiet.stream.getvalue() == ""

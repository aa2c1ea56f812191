"""A checker for client histories of a replicated store under faults: lost acknowledged writes and stale reads.

The workload makes the check simple and exact: every key has one writer, whose writes are sequential and carry
the key's next sequence number in the value (``value_of``). Then, per key:

* a write acknowledged (``ok``) must survive: the final state must hold its sequence number or a later one that was
  at least attempted; anything older (or absent) means the acknowledged writes after it were **lost**;
* a read that started after a write was acknowledged must return that write's number or a later one (a **stale
  read** otherwise), and never a number no writer had started by the time the read ended (an **impossible read**);
* a final state naming a number never attempted is **phantom** (corruption).

Writes answered with an error or not answered at all are ``unknown``: they may or may not have happened, and both
are correct. This is the part of linearizability a single-writer-per-key workload can violate; it needs no search.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["ok", "unknown"]


def value_of(key: str, seq: int) -> bytes:
    """The value the writer of ``key`` stores as its ``seq``-th write."""
    return f"{key}#{seq}".encode()


def seq_of(key: str, value: bytes | None) -> int | None:
    """The sequence number a stored value carries (None: absent); ValueError for a value no writer made."""
    if value is None:
        return None
    text = value.decode()
    prefix = f"{key}#"
    if not text.startswith(prefix) or not text[len(prefix):].isdigit():
        raise ValueError(f"value of {key!r} was not written by this workload: {text[:60]!r}")
    return int(text[len(prefix):])


@dataclass(frozen=True)
class Write:
    """One write attempt: ``outcome`` ok (acknowledged) or unknown (error or no answer); ``lsn`` when acknowledged."""

    key: str
    seq: int
    start: float
    end: float
    outcome: Outcome
    lsn: int | None = None
    shard: int = 0


@dataclass(frozen=True)
class Read:
    """One successful read: the sequence number it returned (None: the key was absent)."""

    key: str
    start: float
    end: float
    seq: int | None


@dataclass
class Report:
    """What the checker found; ``ok`` only when nothing was."""

    lost: list[Write] = field(default_factory=list)
    stale: list[tuple[Read, int]] = field(default_factory=list)  # the read and the seq it had to see at least
    impossible: list[Read] = field(default_factory=list)
    phantom: list[tuple[str, int]] = field(default_factory=list)
    writes: int = 0
    acknowledged: int = 0
    reads: int = 0

    @property
    def ok(self) -> bool:
        """True when no write was lost and no read was stale, impossible or phantom."""
        return not (self.lost or self.stale or self.impossible or self.phantom)

    def summary(self) -> str:
        """One line for an assertion message or a benchmark's output."""
        return (f"{self.writes} writes ({self.acknowledged} acknowledged), {self.reads} reads: "
                f"{len(self.lost)} lost, {len(self.stale)} stale, {len(self.impossible)} impossible, "
                f"{len(self.phantom)} phantom")


def _by_key(writes: Iterable[Write]) -> dict[str, list[Write]]:
    out: dict[str, list[Write]] = {}
    for w in writes:
        out.setdefault(w.key, []).append(w)
    for ws in out.values():
        ws.sort(key=lambda w: w.seq)
    return out


def _check_final(key: str, ws: list[Write], final: int | None, report: Report) -> None:
    attempted = {w.seq for w in ws}
    if final is not None and final not in attempted:
        report.phantom.append((key, final))
        return
    floor = 0 if final is None else final
    report.lost.extend(w for w in ws if w.outcome == "ok" and w.seq > floor)


def _check_read(r: Read, ws: list[Write], report: Report) -> None:
    # The newest write acknowledged before the read began must be visible; nothing begun after the read ended can be.
    must = max((w.seq for w in ws if w.outcome == "ok" and w.end <= r.start), default=None)
    begun = {w.seq for w in ws if w.start <= r.end}
    if r.seq is not None and r.seq not in begun:
        report.impossible.append(r)
    elif must is not None and (r.seq is None or r.seq < must):
        report.stale.append((r, must))


def check(writes: Iterable[Write], reads: Iterable[Read], final: Mapping[str, int | None]) -> Report:
    """Check a history against the final state read from the surviving primary (every written key in ``final``)."""
    by_key = _by_key(writes)
    report = Report()
    for key, ws in by_key.items():
        report.writes += len(ws)
        report.acknowledged += sum(1 for w in ws if w.outcome == "ok")
        if key not in final:
            raise KeyError(f"the final state has no entry for written key {key!r}")
        _check_final(key, ws, final[key], report)
    for r in reads:
        report.reads += 1
        _check_read(r, by_key.get(r.key, []), report)
    return report


def lost_within(report: Report, ranges: Mapping[int, tuple[int, int]]) -> list[Write]:
    """The lost acknowledged writes whose LSN is outside the range reported lost for their shard
    (``ranges``: shard -> (first, last) inclusive); empty when the report accounts for every loss."""
    out = []
    for w in report.lost:
        span = ranges.get(w.shard)
        if span is None or w.lsn is None or not span[0] <= w.lsn <= span[1]:
            out.append(w)
    return out

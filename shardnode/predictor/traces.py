"""Readers for block-I/O cache traces (CSV, libCacheSim oracleGeneral, VMware vscsi, plain id-per-line).

Pure bytes -> arrays; used by the benchmark and for offline training on recorded traces.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SECTOR = 512

_ORACLE = np.dtype([("t", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])
_VSCSI = np.dtype(
    [("sn", "<u4"), ("len", "<u4"), ("nsg", "<u4"), ("cmd", "<u2"), ("ver", "<u2"),
     ("lbn", "<u8"), ("ts", "<u8")]
)
_SCSI_WRITES = {0x0A, 0x2A, 0xAA, 0x8A}
FORMATS = ("csv", "oracleGeneral", "vscsi", "txt")


class TraceFormatError(ValueError):
    """The file does not hold a trace in the format asked for."""


def _ids(values: list[int]) -> np.ndarray:
    """Object ids as int64; ids of 2**63 and over (hashed keys) keep their 64-bit pattern (they read negative)."""
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        pass
    try:
        return np.array(values, dtype=np.uint64).view(np.int64)
    except OverflowError as exc:
        raise TraceFormatError(f"an object id does not fit 64 bits: {exc}") from exc


@dataclass(frozen=True)
class Trace:
    """A request sequence: time (s), object id (= start block), request size (bytes), write flag."""

    time: np.ndarray
    obj_id: np.ndarray
    size: np.ndarray
    write: np.ndarray

    def __len__(self) -> int:
        return int(self.obj_id.shape[0])

    def object_sizes(self) -> np.ndarray:
        """Per request, the size of the object's first request (libCacheSim's oracleGeneral convention)."""
        _, first_idx, inverse = np.unique(self.obj_id, return_index=True, return_inverse=True)
        return self.size[first_idx][inverse]

    def next_access(self) -> np.ndarray:
        """Per request, the 0-based index of the next request to the same object, or -1."""
        n = len(self)
        nxt = np.full(n, -1, dtype=np.int64)
        last: dict[int, int] = {}
        ids = self.obj_id.tolist()
        for i in range(n - 1, -1, -1):
            nxt[i] = last.get(ids[i], -1)
            last[ids[i]] = i
        return nxt


def detect_format(path: Path) -> str:
    """Guess the format from the file name (`.csv`, `.oracleGeneral.bin`, `.vscsi`, `.txt`)."""
    name = path.name
    if name.endswith(".csv"):
        return "csv"
    if "oracleGeneral" in name:
        return "oracleGeneral"
    if name.endswith(".vscsi"):
        return "vscsi"
    if name.endswith(".txt"):
        return "txt"
    raise TraceFormatError(f"cannot tell the trace format of {name!r}; pass one of {FORMATS}")


def _from_csv(data: bytes) -> Trace:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
    need = {"time", "op", "size", "lbn"}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise TraceFormatError(f"CSV trace needs the columns {sorted(need)}, got {reader.fieldnames}")
    times, ids, sizes, writes = [], [], [], []
    for lineno, row in enumerate(reader, start=2):
        try:
            times.append(float(row["time"]))
            ids.append(int(row["lbn"]))
            sizes.append(int(row["size"]))
            writes.append(int(row["op"], 16) in _SCSI_WRITES)
        except (TypeError, ValueError) as exc:
            raise TraceFormatError(f"CSV trace line {lineno}: {exc}") from exc
    return Trace(np.array(times), _ids(ids), np.array(sizes, dtype=np.int64),
                 np.array(writes, dtype=bool))


def _from_oracle(data: bytes) -> Trace:
    if len(data) % _ORACLE.itemsize:
        raise TraceFormatError(f"oracleGeneral size {len(data)} is not a multiple of {_ORACLE.itemsize}")
    rec = np.frombuffer(data, dtype=_ORACLE)
    return Trace(rec["t"].astype(np.float64), rec["id"].view(np.int64), rec["size"].astype(np.int64),
                 np.zeros(len(rec), dtype=bool))


def _from_vscsi(data: bytes) -> Trace:
    if len(data) % _VSCSI.itemsize:
        raise TraceFormatError(f"vscsi size {len(data)} is not a multiple of {_VSCSI.itemsize}")
    rec = np.frombuffer(data, dtype=_VSCSI)
    if len(rec) and not np.all(rec["ver"] == 0x0100):
        raise TraceFormatError("vscsi records are not version 1 (ver != 0x0100)")
    write = np.isin(rec["cmd"], list(_SCSI_WRITES))
    return Trace(rec["ts"].astype(np.float64) / 1e6, rec["lbn"].view(np.int64), rec["len"].astype(np.int64),
                 write)


def _from_txt(data: bytes) -> Trace:
    try:
        ids = _ids([int(x) for x in data.split()])
    except ValueError as exc:
        raise TraceFormatError(f"txt trace: {exc}") from exc
    n = len(ids)
    # No time or size in this format: one request per second, one sector each.
    return Trace(np.arange(n, dtype=np.float64), ids, np.full(n, SECTOR, dtype=np.int64),
                 np.zeros(n, dtype=bool))


def parse_trace(data: bytes, fmt: str) -> Trace:
    """Parse trace bytes in one of FORMATS."""
    parsers = {"csv": _from_csv, "oracleGeneral": _from_oracle, "vscsi": _from_vscsi, "txt": _from_txt}
    if fmt not in parsers:
        raise TraceFormatError(f"unknown trace format {fmt!r}; use one of {FORMATS}")
    trace = parsers[fmt](data)
    if len(trace) == 0:
        raise TraceFormatError("the trace holds no requests")
    return trace


def read_trace(path: Path, fmt: str | None = None) -> Trace:
    """Read a trace file; the format is guessed from its name unless given."""
    return parse_trace(path.read_bytes(), fmt or detect_format(path))

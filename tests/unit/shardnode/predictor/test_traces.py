"""The trace readers agree across formats and refuse what is not a trace."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from chronoshard.shardnode.predictor.traces import TraceFormatError, detect_format, parse_trace, read_trace

ROWS = [(5633898.0, 0x2A, 512, 100), (5633898.5, 0x28, 4096, 101), (5633899.0, 0x2A, 1024, 100)]


def write_all(tmp: Path) -> dict[str, Path]:
    csv = tmp / "t.csv"
    csv.write_text("version,time,op,size,lbn\n" + "".join(f"1,{t},{op:x},{s},{lbn}\n" for t, op, s, lbn in ROWS))
    vscsi = tmp / "t.vscsi"
    vscsi.write_bytes(b"".join(struct.pack("<IIIHHQQ", i, s, 1, op, 0x100, lbn, int(t * 1e6))
                               for i, (t, op, s, lbn) in enumerate(ROWS)))
    oracle = tmp / "t.oracleGeneral.bin"
    oracle.write_bytes(b"".join(struct.pack("<IQIq", int(t), lbn, 512 if lbn == 100 else s, -1)
                                for t, _, s, lbn in ROWS))
    txt = tmp / "t.txt"
    txt.write_text("\n".join(str(lbn) for *_, lbn in ROWS))
    return {"csv": csv, "vscsi": vscsi, "oracleGeneral": oracle, "txt": txt}


def test_formats_agree(tmp_path: Path) -> None:
    files = write_all(tmp_path)
    traces = {fmt: read_trace(path) for fmt, path in files.items()}
    for t in traces.values():
        assert t.obj_id.tolist() == [100, 101, 100]
    assert traces["csv"].write.tolist() == [True, False, True] == traces["vscsi"].write.tolist()
    assert traces["csv"].size.tolist() == [512, 4096, 1024] == traces["vscsi"].size.tolist()
    assert np.allclose(traces["csv"].time, traces["vscsi"].time)
    # Object size is the first request's size (libCacheSim's oracleGeneral convention).
    assert traces["csv"].object_sizes().tolist() == [512, 4096, 512] == traces["oracleGeneral"].size.tolist()
    assert traces["csv"].next_access().tolist() == [2, -1, -1]


def test_detect_format_and_errors(tmp_path: Path) -> None:
    assert detect_format(Path("x.oracleGeneral.bin")) == "oracleGeneral"
    with pytest.raises(TraceFormatError, match="cannot tell"):
        detect_format(Path("x.parquet"))
    with pytest.raises(TraceFormatError, match="multiple of 32"):
        parse_trace(b"\0" * 33, "vscsi")
    with pytest.raises(TraceFormatError, match="multiple of 24"):
        parse_trace(b"\0" * 25, "oracleGeneral")
    with pytest.raises(TraceFormatError, match="columns"):
        parse_trace(b"a,b\n1,2\n", "csv")
    with pytest.raises(TraceFormatError, match="line 2"):
        parse_trace(b"version,time,op,size,lbn\n1,x,2a,512,1\n", "csv")
    with pytest.raises(TraceFormatError, match="no requests"):
        parse_trace(b"", "txt")
    with pytest.raises(TraceFormatError, match="unknown trace format"):
        parse_trace(b"1", "parquet")


# The shared data sits beside the checkout (../shared/data); CHRONOSHARD_SHARED_DATA points elsewhere.
SHARED_TRACE = Path(os.environ.get("CHRONOSHARD_SHARED_DATA", Path(__file__).resolve().parents[4].parent / "shared"
                                   / "data")) / "cache" / "cloudPhysicsIO" / "cloudPhysicsIO.vscsi"


@pytest.mark.skipif(not SHARED_TRACE.exists(), reason="the shared benchmark data is not beside this checkout")
def test_real_trace_counts_match_the_data_readme() -> None:
    t = read_trace(SHARED_TRACE)
    assert len(t) == 113_872 and len(np.unique(t.obj_id)) == 48_974 and int(t.write.sum()) == 66_898
    assert int(t.size.sum()) == 4_205_978_112


def test_ids_over_the_signed_range_keep_their_bits(tmp_path: Path) -> None:
    big = 2**64 - 5
    (tmp_path / "t.txt").write_text(f"1\n{big}\n1\n{big}\n")
    tr = read_trace(tmp_path / "t.txt")
    assert tr.obj_id.dtype == np.int64 and tr.obj_id.view(np.uint64)[1] == big
    assert tr.next_access().tolist() == [2, 3, -1, -1]
    (tmp_path / "t.csv").write_text(f"version,time,op,size,lbn\n1,0.0,28,512,{big}\n1,1.0,2a,512,7\n")
    assert int(read_trace(tmp_path / "t.csv").obj_id.view(np.uint64)[0]) == big
    (tmp_path / "bad.txt").write_text(f"{2**64}\n")
    with pytest.raises(TraceFormatError, match="64 bits"):
        read_trace(tmp_path / "bad.txt")

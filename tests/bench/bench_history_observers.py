"""What the history's observations cost: ``HistoryStore.apply`` of the same changes with and without an observer, in
the same run, on real history files (the profile of every plaintext is computed and stored in both).

    python -m tests.bench.bench_history_observers [--data DIR] [--changes 20000] [--keys 2000] [--batch 500]

CHANGES puts (a tenth of them deletes) over KEYS keys in apply batches of BATCH, so most changes overwrite a key
stored by an earlier batch (one primary-key seek each for the previous version) and some overwrite a key of the
same batch. Values as in bench_shadow_history (``--data``: 8-line records of the CSV files under DIR; default
synthetic JSON order records). Prints changes/s of each store, their ratio, and the time the byte profiles take
alone (computed in both runs; and the reference encode_profile(byte_profile(v)) of the same values) beside the
whole apply.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from chronoshard.shardnode.anomaly.profile import byte_profile, encode_profile
from chronoshard.shardnode.serving.changestream import StreamChange
from chronoshard.shardnode.shadow.observations import stored_profile

from tests.bench.bench_shadow_history import records
from tests.support.shadow_history import delete, open_history, put, ring

R = ring(1, (1,))


def changes(n: int, keys: int, data: Path | None) -> list[StreamChange]:
    """``n`` node changes (node frames sealed once, outside the timing)."""
    rng, values = random.Random(7), records(data)
    out = []
    for lsn in range(1, n + 1):
        key = f"k{rng.randrange(keys):06d}"
        if rng.random() < 0.1:
            out.append(delete(lsn, float(lsn), "t", key))
        else:
            out.append(put(R, lsn, float(lsn), "t", key, next(values)))
    return out


def timed_apply(stream: list[StreamChange], batch: int, observed: bool) -> tuple[float, float, int]:
    """Seconds (wall, and this process's CPU) to apply ``stream`` in batches to a new history file, and
    observations received."""
    got: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        h, _ = open_history(Path(tmp))
        if observed:
            h.add_observer(lambda b: got.append(len(b)))
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(stream), batch):
            h.apply(stream[i:i + batch])
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        h.close()
    return elapsed, cpu, sum(got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--changes", type=int, default=20000)
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs of each; the best of each is reported")
    args = ap.parse_args()
    stream = changes(args.changes, args.keys, args.data)
    plain: list[float] = []
    observed: list[float] = []
    plain_cpu: list[float] = []
    observed_cpu: list[float] = []
    for _ in range(args.rounds):  # alternated, so machine load drifts over both alike
        t, c, _ = timed_apply(stream, args.batch, False)
        plain.append(t)
        plain_cpu.append(c)
        t, c, n = timed_apply(stream, args.batch, True)
        observed.append(t)
        observed_cpu.append(c)
        assert n == len(stream), f"observers got {n} observations of {len(stream)} changes"
    puts = sum(1 for c in stream if c.op == "put")
    vals = records(args.data)  # the same plaintexts the puts carry, in the same order
    plaintexts = [next(vals) for _ in range(puts)]
    t0 = time.perf_counter()
    for v in plaintexts:
        stored_profile(v)
    prof = time.perf_counter() - t0
    t0 = time.perf_counter()
    for v in plaintexts:
        encode_profile(byte_profile(v))
    prof_ref = time.perf_counter() - t0
    n = len(stream)
    print(f"changes {n}, keys {args.keys}, batch {args.batch}, puts {puts}")
    print(f"apply without observer: {n / min(plain):,.0f} changes/s (best of {args.rounds}: {min(plain):.2f} s)")
    print(f"apply with observer:    {n / min(observed):,.0f} changes/s (best of {args.rounds}: {min(observed):.2f} s)")
    print(f"ratio with/without: {min(observed) / min(plain):.3f}x wall time, "
          f"{min(observed_cpu) / min(plain_cpu):.3f}x CPU time (best of each: {min(plain_cpu):.2f} s, "
          f"{min(observed_cpu):.2f} s)")
    print(f"observer cost: {(min(observed_cpu) - min(plain_cpu)) / n * 1e6:.1f} us CPU per change")
    print(f"byte profiles alone (in both): {prof:.2f} s = {prof / min(plain):.1%} of the apply without observer "
          f"(encode_profile(byte_profile(v)) of the same values: {prof_ref:.2f} s)")


if __name__ == "__main__":
    main()

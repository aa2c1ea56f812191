"""The split forecast (docs/weaving.md#the-split-forecast) rolled forward over growth and load series derived from
real traces, every model beside the baselines (naive, seasonal-naive, drift), in the same run.

    python -m tests.bench.bench_weave_forecast --data /work/shared/data [--ranges 16] [--window-min 45]
        [--lead-min 30] [--every-min 6] [--every-coarse-min 480] [--models linear,arima,...]

(about 4 min on 2 shared cores; run it with OPENBLAS_NUM_THREADS=1, as the weaver should)

``--data`` is searched recursively for
- block-I/O traces, CSV with the columns ``time, op, size, lbn`` (``op`` 2a/2b/8a = write, anything else a read):
  the lbn space is cut into ``--ranges`` equal ranges, each a partition; per minute, its cumulative unique bytes
  written (sectors first written) and its cumulative reads and writes are one sample;
- NAB-format CSVs (``timestamp,value``): each series cut into ``--segment-days`` segments, each a partition whose
  request rate is the value and whose stored bytes are the value's cumulative sum (1 KiB per request).

Thresholds (the rule, the same for every file, never tuned to one): partition i of a file gets the size threshold
at the ``SIZE_QUANTILES[i % 4]`` quantile of its own stored-bytes values (for a growing series, the size it has
about that far through its span; None = never) and the load threshold at the ``LOAD_QUANTILES[(i // 4) % 3]``
quantile of its load's running minimum over the sustain time (so about that share of its time is not a sustained
overload). Each partition then crosses at a different point, or not at all.

Forecast times: every ``--every-min`` (``--every-coarse-min`` for samples over a minute apart) from the warm-up
(a sixth of the span, at least 8 samples) to the span's end minus the window. At each, a partition already above
a threshold is skipped (its forecast is trivially 1). Scores:
- recall at lead: an observed crossing at T counts as caught if some forecast at t in [T - window, T - lead]
  (whose next observed crossing is T) had p >= the confidence; precision: the share of forecasts with p >= the
  confidence followed by an observed crossing within their window;
- 80% interval coverage of size and load at the window's end; MAPE of their point forecasts (over points whose
  actual value is not 0) divided by the naive and the seasonal-naive MAPE on the same points;
- Brier score and a reliability table: the Calibrator fitted on each partition's first half of forecast times
  (pooled), scored on the second half, beside the raw probabilities on the same half.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from chronoshard.shardnode.forecasting.calibration import Calibrator
from chronoshard.shardnode.forecasting.crossing import steps_to_sustain, trailing_run
from chronoshard.shardnode.forecasting.series import Grid, to_grid
from chronoshard.shardnode.forecasting.split import BASELINES, MODELS, forecast_split
from chronoshard.shardnode.forecasting.types import PartitionSample, SplitThresholds
from threadpoolctl import threadpool_limits

SIZE_QUANTILES: tuple[float | None, ...] = (0.35, 0.6, 0.85, None)
LOAD_QUANTILES: tuple[float | None, ...] = (0.9, 0.97, None)
WRITE_OPS = {"2a", "2b", "8a", "0a", "aa"}  # SCSI WRITE(6/10/12/16) and WRITE AND VERIFY
SECTOR = 512
MIN_REQUESTS = 50  # a range with fewer requests in the whole trace is an idle partition: left out
SUSTAIN_SECONDS = 600.0
DAY = 86400.0


@dataclass
class Partition:
    """One partition's samples, thresholds and the season for the seasonal baseline."""

    source: str
    name: str
    samples: list[PartitionSample]
    thresholds: SplitThresholds
    season: float
    truth: Grid = field(init=False)

    def __post_init__(self) -> None:
        dt = float(np.median(np.diff([s.time for s in self.samples])))
        self.truth = to_grid(self.samples, dt, max_steps=10**9)


# ---------------------------------------------------------------------------------------------- reading the data


def _read_io_trace(path: Path) -> dict[str, np.ndarray] | None:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"time", "op", "size", "lbn"} <= set(reader.fieldnames):
            return None
        rows = [(float(r["time"]), r["op"].strip().lower() in WRITE_OPS, int(r["size"]), int(r["lbn"]))
                for r in reader]
    rows.sort(key=lambda r: r[0])
    a = np.array(rows, dtype=np.float64)
    return {"time": a[:, 0], "write": a[:, 1] > 0, "size": a[:, 2].astype(np.int64), "lbn": a[:, 3].astype(np.int64)}


def _first_write_times(tr: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per sector ever written: the time it was first written and the lbn of that request."""
    w = tr["write"]
    lbn, size, t = tr["lbn"][w], tr["size"][w], tr["time"][w]
    k = np.maximum(1, -(-size // SECTOR))
    starts = np.repeat(lbn, k)
    offsets = np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)
    sectors = starts + offsets
    _, first = np.unique(sectors, return_index=True)  # rows are in time order: the first index is the first write
    return np.repeat(t, k)[first], np.repeat(lbn, k)[first]


def io_partitions(path: Path, ranges: int) -> list[Partition]:
    """Per lbn range of a block-I/O trace: per-minute samples of unique bytes written and cumulative requests."""
    tr = _read_io_trace(path)
    if tr is None or not len(tr["time"]):
        return []
    lo, hi = int(tr["lbn"].min()), int(tr["lbn"].max())
    width = (hi - lo) // ranges + 1
    t0 = math.floor(tr["time"][0] / 60) * 60
    minutes = int((tr["time"][-1] - t0) // 60) + 1
    edges = t0 + 60.0 * np.arange(1, minutes + 1)
    first_t, first_lbn = _first_write_times(tr)
    req_range = (tr["lbn"] - lo) // width
    new_range = (first_lbn - lo) // width
    out = []
    for r in range(ranges):
        mine = req_range == r
        if mine.sum() < MIN_REQUESTS:
            continue
        cum_bytes = np.searchsorted(np.sort(first_t[new_range == r]), edges, side="right") * SECTOR
        writes = np.searchsorted(tr["time"][mine & tr["write"]], edges, side="right")
        reads = np.searchsorted(tr["time"][mine & ~tr["write"]], edges, side="right")
        samples = [PartitionSample(float(e), int(b), int(b // 4096), int(w), int(rd))
                   for e, b, w, rd in zip(edges, cum_bytes, writes, reads, strict=True)]
        out.append(_partition("io", f"{path.stem}[{r}]", samples, len(out), edges[-1] - edges[0]))
    return out


def _read_nab(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            return None
        rows = [(datetime.fromisoformat(r[0].strip()).timestamp(), float(r[1])) for r in reader if len(r) >= 2]
    a = np.array(sorted(rows), dtype=float)
    return a[:, 0], a[:, 1]


def nab_partitions(path: Path, segment_days: float) -> list[Partition]:
    """A NAB series cut into segments: request rate = the value, stored bytes = its cumulative sum."""
    read = _read_nab(path)
    if read is None:
        return []
    t, v = read
    v = np.maximum(v, 0.0)
    dt = np.diff(t, prepend=t[0] - float(np.median(np.diff(t))))
    out = []
    bounds = np.arange(t[0], t[-1], segment_days * DAY)
    for start in bounds:
        sel = (t >= start) & (t < start + segment_days * DAY)
        if sel.sum() < 100:
            continue
        requests = np.cumsum(v[sel] * dt[sel])
        samples = [PartitionSample(float(ti), int(q * 1024), int(q), 0, int(q))
                   for ti, q in zip(t[sel], requests, strict=True)]
        span = float(t[sel][-1] - t[sel][0])
        out.append(_partition("nab", f"{path.stem}@{len(out)}", samples, len(out), span))
    return out


def _partition(source: str, name: str, samples: list[PartitionSample], i: int, span: float) -> Partition:
    """The partition with its thresholds by the rule in the module docstring."""
    size = np.array([s.bytes for s in samples], dtype=float)
    dt = float(np.median(np.diff([s.time for s in samples])))
    grid = to_grid(samples, dt, max_steps=10**9)
    need = steps_to_sustain(dt, SUSTAIN_SECONDS)
    running_min = np.array([grid.load[max(0, j - need + 1): j + 1].min() for j in range(len(grid.load))])
    qs, ql = SIZE_QUANTILES[i % len(SIZE_QUANTILES)], LOAD_QUANTILES[(i // len(SIZE_QUANTILES)) % len(LOAD_QUANTILES)]
    size_thr = int(np.quantile(size, qs)) + 1 if qs is not None else 2**62
    load_thr = float(np.quantile(running_min, ql)) if ql is not None else math.inf
    if ql is not None and load_thr <= 0:
        load_thr = math.inf  # a mostly idle range: "above 0" would be every request, not an overload
    # a seasonal baseline needs a season: a day when the series has two, else the forecast window (set later)
    season = DAY if span >= 2 * DAY else 0.0
    return Partition(source, name, samples, SplitThresholds(size_thr, load_thr, SUSTAIN_SECONDS), season)


def load_partitions(data: Path, ranges: int, segment_days: float) -> list[Partition]:
    """Every partition derived from the files under ``data``."""
    parts: list[Partition] = []
    for path in sorted(data.rglob("*.csv")):
        with path.open() as f:
            header = f.readline().strip().lower()
        if header.startswith("timestamp,value"):
            parts += nab_partitions(path, segment_days)
        elif {"time", "op", "size", "lbn"} <= set(header.split(",")):
            parts += io_partitions(path, ranges)
    return parts


# ---------------------------------------------------------------------------------------------- rolling forward


@dataclass(frozen=True)
class Truth:
    """What happened after a forecast time."""

    next_cross: float | None  # the first crossing after t (any distance)
    next_reason: str | None  # "size" | "load"
    size_end: float
    load_end: float


@dataclass(frozen=True)
class Row:
    """One forecast, with what happened."""

    part: int
    t: float
    p: float
    label: bool
    truth: Truth
    size: tuple[float, float, float]
    load: tuple[float, float, float]
    seconds: float


def _already(part: Partition, t: float) -> bool:
    g = part.truth
    upto = g.times <= t + 1e-6
    if not upto.any():
        return True
    need = steps_to_sustain(g.step, part.thresholds.sustain_seconds)
    return bool(g.bytes[upto][-1] >= part.thresholds.size_bytes
                or trailing_run(g.load[upto] >= part.thresholds.load_rps) >= need)


def _next_cross(part: Partition, t: float) -> tuple[float | None, str | None]:
    g, th = part.truth, part.thresholds
    need = steps_to_sustain(g.step, th.sustain_seconds)
    run = 0
    for time_, b, ld in zip(g.times, g.bytes, g.load, strict=True):
        run = run + 1 if ld >= th.load_rps else 0
        if time_ > t + 1e-6 and (b >= th.size_bytes or run >= need):
            return float(time_), ("size" if b >= th.size_bytes else "load")
    return None, None


def _truth(part: Partition, t: float, window: float) -> Truth:
    g = part.truth
    end = t + window
    j = int(np.searchsorted(g.times, end - 1e-6))
    j = min(j, len(g.times) - 1)
    return Truth(*_next_cross(part, t), float(g.bytes[j]), float(g.load[j]))


def forecast_times(part: Partition, window: float, every: float) -> list[float]:
    """The partition's forecast times (module docstring)."""
    times = [s.time for s in part.samples]
    start = max(times[0] + (times[-1] - times[0]) / 6, times[min(8, len(times) - 1)])
    out, t = [], start
    while t <= times[-1] - window:
        out.append(t)
        t += every
    return out


def roll(parts: Sequence[Partition], models: Sequence[str], window: float, every: tuple[float, float],
         ) -> dict[str, list[Row]]:
    """Every model's forecasts at every forecast time of every partition (``every``: for samples a minute or
    less apart, and for coarser ones)."""
    rows: dict[str, list[Row]] = {m: [] for m in models}
    for i, part in enumerate(parts):
        season = part.season or window
        step = every[0] if part.truth.step <= 60 else every[1]
        for t in forecast_times(part, window, step):
            if _already(part, t):
                continue
            truth = _truth(part, t, window)
            label = truth.next_cross is not None and truth.next_cross <= t + window
            hist = [s for s in part.samples if s.time <= t]
            for m in models:
                t0 = time.perf_counter()
                fc = forecast_split(hist, t, window, part.thresholds, m, season_seconds=season)
                took = time.perf_counter() - t0
                s, ld = fc.size_at_window_end, fc.load_at_window_end
                rows[m].append(Row(i, t, fc.probability, label, truth, (s.low, s.point, s.high),
                                   (ld.low, ld.point, ld.high), took))
    return rows


# ---------------------------------------------------------------------------------------------- scores


def recall_precision(rows: Sequence[Row], window: float, lead: float, confidence: float,
                     probs: Sequence[float] | None = None, reason: str | None = None) -> tuple[float, float, int, int]:
    """Event recall at >= lead and forecast precision at ``confidence`` (module docstring); ``reason`` limits
    the recall to that kind of crossing."""
    ps = [r.p for r in rows] if probs is None else list(probs)
    events: dict[tuple[int, float], bool] = {}
    first_t: dict[int, float] = {}
    last_t: dict[int, float] = {}
    for r in rows:
        first_t[r.part] = min(first_t.get(r.part, r.t), r.t)
        last_t[r.part] = max(last_t.get(r.part, r.t), r.t)
    for r, p in zip(rows, ps, strict=True):
        nc = r.truth.next_cross
        if nc is None or not (first_t[r.part] + lead <= nc <= last_t[r.part] + window):
            continue
        if reason is not None and r.truth.next_reason != reason:
            continue
        key = (r.part, nc)
        caught = nc - window <= r.t <= nc - lead and p >= confidence
        events[key] = events.get(key, False) or caught
    positives = [r.label for r, p in zip(rows, ps, strict=True) if p >= confidence]
    recall = sum(events.values()) / len(events) if events else math.nan
    precision = sum(positives) / len(positives) if positives else math.nan
    return recall, precision, len(events), len(positives)


def coverage(rows: Sequence[Row]) -> tuple[float, float]:
    """The share of actual sizes and loads at the window's end inside the 80% intervals."""
    size = np.mean([r.size[0] <= r.truth.size_end <= r.size[2] for r in rows]) if rows else math.nan
    load = np.mean([r.load[0] <= r.truth.load_end <= r.load[2] for r in rows]) if rows else math.nan
    return float(size), float(load)


def mape(rows: Sequence[Row], which: str, keep: np.ndarray) -> float:
    """The mean absolute percentage error of the point forecasts at the window's end over ``keep``."""
    if which == "size":
        actual = np.array([r.truth.size_end for r in rows])
        point = np.array([r.size[1] for r in rows])
    else:
        actual = np.array([r.truth.load_end for r in rows])
        point = np.array([r.load[1] for r in rows])
    if not keep.any():
        return math.nan
    return float(np.mean(np.abs(point[keep] - actual[keep]) / np.abs(actual[keep])))


def split_halves(rows: Sequence[Row]) -> tuple[list[int], list[int]]:
    """Row indices of each partition's first half of forecast times, and of its second half."""
    by_part: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_part.setdefault(r.part, []).append(i)
    first: list[int] = []
    second: list[int] = []
    for idx in by_part.values():
        idx.sort(key=lambda i: rows[i].t)
        first += idx[: len(idx) // 2]
        second += idx[len(idx) // 2:]
    return first, second


def brier(p: Sequence[float], y: Sequence[bool]) -> float:
    """The mean squared difference of probability and outcome."""
    return float(np.mean((np.asarray(p, dtype=float) - np.asarray(y, dtype=float)) ** 2)) if len(p) else math.nan


def calibrated(rows: Sequence[Row]) -> tuple[list[int], list[float], Calibrator]:
    """The second half's row indices and their probabilities by a Calibrator fitted on the first half."""
    first, second = split_halves(rows)
    cal = Calibrator()
    cal.fit([rows[i].p for i in first], [rows[i].label for i in first])
    return second, [cal.apply(rows[i].p) for i in second], cal


def reliability(p: Sequence[float], y: Sequence[bool], bins: int = 5) -> list[tuple[str, int, float, float]]:
    """Per probability bin: its count, mean forecast and observed frequency."""
    out = []
    pa, ya = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (pa >= lo) & ((pa < hi) if b < bins - 1 else (pa <= hi))
        if sel.any():
            out.append((f"{lo:.1f}-{hi:.1f}", int(sel.sum()), float(pa[sel].mean()), float(ya[sel].mean())))
    return out


# ---------------------------------------------------------------------------------------------- report


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1f}" if x >= 10 else f"{x:.3f}"


COLUMNS = ("rec@.5", "prec@.5", "rec size", "rec load", "rec@.75c", "prec@.75c", "cov size", "cov load",
           "MAPEs/n", "MAPEs/sn", "MAPEl/n", "MAPEl/sn", "Brier raw", "Brier cal", "ms/call")


def _mape_ratios(rs: Sequence[Row], naive: Sequence[Row] | None, snaive: Sequence[Row] | None) -> list[float]:
    ratios = []
    for which in ("size", "load"):
        actual = np.array([r.truth.size_end if which == "size" else r.truth.load_end for r in rs])
        keep = actual != 0
        own = mape(rs, which, keep)
        ratios += [own / mape(base, which, keep) if base else math.nan for base in (naive, snaive)]
    return ratios


def model_scores(rs: Sequence[Row], rows: dict[str, list[Row]], window: float, lead: float) -> list[float]:
    """One model's figures, in COLUMNS order."""
    rec, prec, _, _ = recall_precision(rs, window, lead, 0.5)
    rec_size = recall_precision(rs, window, lead, 0.5, reason="size")[0]
    rec_load = recall_precision(rs, window, lead, 0.5, reason="load")[0]
    second, pc, _ = calibrated(rs)
    rc, pcn, _, _ = recall_precision([rs[i] for i in second], window, lead, 0.75, pc)
    cs, cl = coverage(rs)
    ratios = _mape_ratios(rs, rows.get("naive"), rows.get("seasonal-naive"))
    b_raw = brier([rs[i].p for i in second], [rs[i].label for i in second])
    b_cal = brier(pc, [rs[i].label for i in second])
    ms = 1000 * float(np.mean([r.seconds for r in rs]))
    return [rec, prec, rec_size, rec_load, rc, pcn, cs, cl, *ratios, b_raw, b_cal, ms]


def report(rows: dict[str, list[Row]], window: float, lead: float, title: str) -> None:
    """Print the model-by-model table for these rows."""
    first = next(iter(rows.values()))
    counts = [recall_precision(first, window, lead, 0.5, reason=k)[2] for k in ("size", "load")]
    print(f"\n== {title}: {len(first)} forecasts per model, window {window / 60:.0f} min, lead >= {lead / 60:.0f} "
          f"min; events: {counts[0]} size, {counts[1]} load")
    print(f"{'model':24} " + " ".join(f"{c:>9}" for c in COLUMNS))
    for m, rs in rows.items():
        print(f"{m:24} " + " ".join(f"{_fmt(x):>9}" for x in model_scores(rs, rows, window, lead)))


def report_reliability(rows: dict[str, list[Row]]) -> None:
    """Print each model's reliability table (calibrated, second half)."""
    print("\nreliability (calibrated on the first half, second half): bin, count, mean forecast, observed")
    for m, rs in rows.items():
        second, pc, cal = calibrated(rs)
        cells = ", ".join(f"{b}: {n} {mp:.2f}/{obs:.2f}"
                          for b, n, mp, obs in reliability(pc, [rs[i].label for i in second]))
        print(f"  {m:24} [{cal.method}] {cells}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print its tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--ranges", type=int, default=16)
    ap.add_argument("--segment-days", type=float, default=4.0)
    ap.add_argument("--window-min", type=float, default=45.0)
    ap.add_argument("--lead-min", type=float, default=30.0)
    ap.add_argument("--every-min", type=float, default=6.0, help="forecast cadence for samples <= 1 min apart")
    ap.add_argument("--every-coarse-min", type=float, default=480.0, help="forecast cadence for coarser samples")
    ap.add_argument("--models", default=",".join([m for m in MODELS if m != "auto"] + list(BASELINES)))
    args = ap.parse_args(argv)
    # one BLAS thread: the models' matrices are tiny, and on a shared machine threads only wait for each other
    threadpool_limits(1)
    window, lead = args.window_min * 60, args.lead_min * 60
    models = [m for m in args.models.split(",") if m]
    parts = load_partitions(args.data, args.ranges, args.segment_days)
    if not parts:
        raise SystemExit(f"no block-I/O trace or NAB series under {args.data}")
    t0 = time.perf_counter()
    all_rows = roll(parts, models, window, (args.every_min * 60, args.every_coarse_min * 60))
    for source in sorted({p.source for p in parts}):
        rows = {m: [r for r in rs if parts[r.part].source == source] for m, rs in all_rows.items()}
        report(rows, window, lead, f"{source}: {sum(p.source == source for p in parts)} partitions")
    report(all_rows, window, lead, "all sources")
    report_reliability(all_rows)
    print(f"\n{len(parts)} partitions, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

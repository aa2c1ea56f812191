"""NAB (the Numenta Anomaly Benchmark): our streaming detector beside a windowed-Gaussian baseline, run in the same
process on the same series, scored with NAB's rules (``tests.bench.nab_scoring``) per profile.

    python -m tests.bench.bench_nab --data ../shared/data/nab [--labels FILE] [--results-dir DIR]
                                    [--score-results DIR]

``--data`` is searched recursively for NAB-format CSVs (``timestamp,value``); each is matched to the label windows
file (``combined_windows*.json`` under ``--data`` unless ``--labels``) by its relative path, else by its file name.
Each detector sees the rows one ``update`` at a time, in order. The null detector and the perfect detector are
scored too: 0 and 100 by construction, a check of the scorer. Each score is given for all series and for the
even- and odd-numbered series (sorted by label key, a threshold swept per set): decide on the even half, check on
the odd. ``--results-dir`` writes NAB's results layout
(``<detector>/<category>/<detector>_<file>.csv`` with ``timestamp,value,anomaly_score,label``) for NAB's own
scorer; ``--score-results`` scores the detectors of an existing NAB results directory (e.g. NAB's published
``results/``) with our scorer, a check of the scorer against NAB's published figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from chronoshard.shardnode.anomaly.streaming import StreamingDetector, WindowedGaussian

from tests.bench.nab_scoring import (
    PROFILES,
    FileLabels,
    null_scores,
    perfect_scores,
    probation_length,
    sweep,
    window_rows,
)
from tests.bench.nab_scoring import normalised as normalise


class Detector(Protocol):
    def update(self, t: float, x: float) -> float: ...


Factory = Callable[..., Detector]


@dataclass(frozen=True)
class Series:
    """One labelled NAB series: its label key (``category/file.csv``), rows and windows."""

    key: str
    path: Path
    timestamps: list[datetime]
    values: list[float]
    labels: FileLabels


def parse_time(text: str) -> datetime:
    """A NAB timestamp (``2014-02-14 14:30:00[.ffffff]``) as a naive datetime."""
    return datetime.fromisoformat(text.strip())


def read_series(path: Path) -> tuple[list[datetime], list[float]] | None:
    """The rows of a NAB-format CSV, or None when the file is not one."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            return None
        ts, xs = [], []
        for row in reader:
            ts.append(parse_time(row[0]))
            xs.append(float(row[1]))
    return ts, xs


def find_labels(data: Path) -> Path:
    """The label windows file under ``data`` (``combined_windows*.json``; the shortest name when several)."""
    found = sorted(data.rglob("combined_windows*.json"), key=lambda p: (len(p.name), str(p)))
    if not found:
        raise SystemExit(f"no combined_windows*.json under {data}: pass --labels")
    return found[0]


def load_series(data: Path, labels_path: Path) -> tuple[list[Series], list[str]]:
    """The labelled series under ``data`` and the label keys no series matched."""
    labels: dict[str, list[list[str]]] = json.loads(labels_path.read_text())
    by_name: dict[str, list[str]] = {}
    for k in labels:
        by_name.setdefault(Path(k).name, []).append(k)
    out, used = [], set()
    for path in sorted(data.rglob("*.csv")):
        rel = path.relative_to(data).as_posix()
        key = rel if rel in labels else None
        if key is None and len(by_name.get(path.name, [])) == 1:
            key = by_name[path.name][0]
        if key is None or key in used:
            continue
        rows = read_series(path)
        if rows is None:
            continue
        ts, xs = rows
        windows = window_rows(ts, [(parse_time(a), parse_time(b)) for a, b in labels[key]])
        used.add(key)
        out.append(Series(key, path, ts, xs, FileLabels(key, len(ts), tuple(windows))))
    return out, sorted(set(labels) - used)


def epoch(t: datetime) -> float:
    """Seconds since the epoch of a naive (UTC) timestamp."""
    return t.replace(tzinfo=UTC).timestamp()


def run(make: Factory, s: Series) -> list[float]:
    """A fresh detector's scores over the series, one update per row in order; its warm-up is NAB's probation
    period of the file, as NAB gives its detectors."""
    d = make(probation=int(probation_length(s.labels.rows)))
    return [d.update(epoch(t), x) for t, x in zip(s.timestamps, s.values, strict=True)]


def write_results(root: Path, detector: str, s: Series, scores: Sequence[float]) -> None:
    """One series' scores in NAB's results format and layout."""
    category, name = Path(s.key).parent, Path(s.key).name
    out = root / detector / category / f"{detector}_{name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    inside = [0] * s.labels.rows
    for left, right in s.labels.windows:
        for i in range(left, right + 1):
            inside[i] = 1
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value", "anomaly_score", "label"])
        for t, x, a, lab in zip(s.timestamps, s.values, scores, inside, strict=True):
            w.writerow([t.strftime("%Y-%m-%d %H:%M:%S"), repr(x), f"{a:.9f}", lab])


def read_results(root: Path, detector: str, series: Sequence[Series]) -> list[list[float]] | None:
    """A NAB results directory's scores of ``detector`` for each series, or None if one is missing."""
    out = []
    for s in series:
        path = root / detector / Path(s.key).parent / f"{detector}_{Path(s.key).name}"
        if not path.exists():
            return None
        with path.open(newline="") as f:
            out.append([float(r["anomaly_score"]) for r in csv.DictReader(f)])
    return out


def halves(files: Sequence[FileLabels]) -> dict[str, list[int]]:
    """The indices of all files, and of the even- and odd-numbered ones in sorted order of their keys: design
    decisions are made on the even half, the odd half is the held-out check."""
    order = sorted(range(len(files)), key=lambda i: files[i].name)
    return {"all": order, "even": order[0::2], "odd": order[1::2]}


def report(files: list[FileLabels], scored: dict[str, list[list[float]]], seconds: dict[str, float]) -> None:
    """Per profile: each detector's normalised score on all files and on each half (a threshold swept per set)."""
    windows = sum(len(f.windows) for f in files)
    print(f"{len(files)} series, {sum(f.rows for f in files)} rows, {windows} anomaly windows")
    sets = halves(files)
    for profile in PROFILES:
        print(f"\nprofile {profile.name} (TP {profile.tp}, FP {profile.fp}, FN {profile.fn})")
        print(f"  {'detector':<22} {'score':>7} {'even':>7} {'odd':>7} {'raw':>8} {'threshold':>10} {'seconds':>8}")
        for name, scores in scored.items():
            figures = {}
            for which, idx in sets.items():
                sub = [files[i] for i in idx]
                best = sweep(sub, [scores[i] for i in idx], profile)
                null_raw = sweep(sub, null_scores(sub), profile).raw
                has_windows = any(f.windows for f in sub)
                figures[which] = (normalise(best.raw, null_raw, sub, profile) if has_windows else math.nan, best)
            secs = f"{seconds[name]:8.1f}" if name in seconds else " " * 8
            score, best = figures["all"]
            print(
                f"  {name:<22} {score:7.1f} {figures['even'][0]:7.1f} {figures['odd'][0]:7.1f} {best.raw:8.2f} "
                f"{best.threshold:10.4f} {secs}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/nab"))
    ap.add_argument("--labels", type=Path, default=None)
    ap.add_argument("--results-dir", type=Path, default=None, help="write NAB-format results here")
    ap.add_argument(
        "--score-results", type=Path, default=None, help="also score every detector of this NAB results directory"
    )
    args = ap.parse_args()
    labels = args.labels or find_labels(args.data)
    series, unmatched = load_series(args.data, labels)
    if not series:
        raise SystemExit(f"no series under {args.data} matches a key of {labels}")
    print(f"labels {labels}; unmatched label keys: {len(unmatched)}")
    files = [s.labels for s in series]
    scored: dict[str, list[list[float]]] = {}
    seconds: dict[str, float] = {}
    detectors: dict[str, Factory] = {"streaming": StreamingDetector, "windowedGaussian": WindowedGaussian}
    for name, make in detectors.items():
        start = time.perf_counter()
        scored[name] = [run(make, s) for s in series]
        seconds[name] = time.perf_counter() - start
        if args.results_dir is not None:
            for s, sc in zip(series, scored[name], strict=True):
                write_results(args.results_dir, name, s, sc)
    scored["null"] = null_scores(files)
    scored["perfect"] = perfect_scores(files)
    if args.score_results is not None:
        for d in sorted(p.name for p in args.score_results.iterdir() if p.is_dir()):
            published = read_results(args.score_results, d, series)
            if published is not None:
                scored[f"{d} (results dir)"] = published
    report(files, scored, seconds)


if __name__ == "__main__":
    main()

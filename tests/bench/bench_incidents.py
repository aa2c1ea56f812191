"""Incidents benchmark: detection and impact analysis on a change stream with injected incidents (issue #15).

Replays the writes of a real trace (CloudPhysics, ``--data``) or a synthetic pattern as one table's changes with
realistic values (tests/bench/incident_stream.py), trains on the training period's windows, then scores the test
period's windows and analyses each run of windows at or above the threshold, exactly as the shadow does
(observations -> windows -> detector -> incidents). Prints, per detector and beside baselines measured in the same
run (the rule-based detector and a plain z-score of the write rate): recall of incidents, false alarms per day of
replayed time (any alarm not overlapping an incident, legitimate heavy work included), median detection delay after
the first bad change, and the impact analysis' key recall and wrongly included share.

    .venv/bin/python -m tests.bench.bench_incidents [--data CSV] [--seeds 3] [--pattern both] [--time-factor 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from chronoshard.shardnode.anomaly.calibration import score_of_p
from chronoshard.shardnode.anomaly.detector import Detector, WindowDetector
from chronoshard.shardnode.anomaly.features import FeatureContext, learn_context, window_features
from chronoshard.shardnode.anomaly.impact import analyse
from chronoshard.shardnode.anomaly.rules import RuleDetector
from chronoshard.shardnode.anomaly.types import ChangeObservation, Driver, Score, WindowFeatures

from tests.bench.incident_stream import TABLE, Stream, Truth, generate, synthetic_writes, trace_writes

DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared/data/cache/cloudPhysicsIO/cloudPhysicsIO.csv"
GRACE = 900.0  # an alarm up to 15 minutes after an incident's last bad change is still that incident's
MARGIN = 15  # windows before a run handed to the impact analysis (a drip is seen after some windows of it)


class WriteRateZ:
    """Baseline: a plain z-score of the client write rate against the training windows' mean and deviation."""

    name = "zscore-write-rate"

    def __init__(self, windows: Sequence[WindowFeatures]) -> None:
        rates = np.array([w.as_dict()["put_rate"] + w.as_dict()["delete_rate"] for w in windows])
        self.mean, self.std = float(rates.mean()), max(float(rates.std()), 1e-9)

    def score(self, features: WindowFeatures, recent: Sequence[WindowFeatures] = ()) -> Score:
        d = features.as_dict()
        rate = d["put_rate"] + d["delete_rate"]
        z = (rate - self.mean) / self.std
        p = 0.5 * math.erfc(z / math.sqrt(2))
        return Score(score_of_p(p), self.name, (Driver("overwrite_rate", rate, self.mean, 1.0),))


@dataclass
class Result:
    detected: int = 0
    incidents: int = 0
    false_alarms: int = 0
    days: float = 0.0
    delays: list[float] = field(default_factory=list)
    found_true: int = 0
    truth_keys: int = 0
    found: int = 0
    wrong: int = 0
    missed_kinds: list[str] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(
        default_factory=dict
    )  # kind -> [incidents, detected, delay sum, truth keys, found true, found, wrong]
    fa_causes: list[str] = field(default_factory=list)
    fit_s: float = 0.0
    score_s: float = 0.0


def _windows(stream: Stream, interval: float) -> tuple[dict[int, list[ChangeObservation]], int, int, int]:
    buckets: dict[int, list[ChangeObservation]] = defaultdict(list)
    for o in stream.observations:
        buckets[int(o.time // interval)].append(o)
    return buckets, int(stream.train_start // interval), int(stream.test_start // interval), int(stream.end // interval)


def _evaluate(
    stream: Stream,
    detector: Detector,
    buckets: dict[int, list[ChangeObservation]],
    feats: dict[int, WindowFeatures],
    test_range: range,
    context: FeatureContext,
    threshold: float,
    res: Result,
) -> None:
    t0 = time.perf_counter()
    many = getattr(detector, "score_many", None)
    ws = [feats[i] for i in test_range]
    before = [feats[i] for i in range(test_range.start - 9, test_range.start) if i in feats]
    scores = many(ws, before) if many is not None else [detector.score(w) for w in ws]
    res.score_s += time.perf_counter() - t0
    runs: list[list[int]] = []
    for i, s in zip(test_range, scores, strict=True):
        if s.score >= threshold:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
    bad = [t for t in stream.truths if t.bad and t.keys]
    found_keys: dict[int, set[str]] = defaultdict(set)
    first_alarm: dict[int, float] = {}
    for run in runs:
        scored = [(feats[i], scores[i - test_range.start]) for i in run]
        start, end = feats[run[0]].start, feats[run[-1]].end
        hit = [j for j, t in enumerate(bad) if start <= t.last_time + GRACE and end > t.first_time]
        if not hit:
            res.false_alarms += 1
            res.fa_causes.append(_cause(stream.truths, start, end))
            continue
        obs = [o for i in range(run[0] - MARGIN, run[-1] + 2) for o in buckets.get(i, ())]
        try:
            inc = analyse(TABLE, scored, obs, context, table_keys=stream.live_keys_at_test)
        except ValueError:
            continue
        for j in hit:
            found_keys[j] |= {k.key for k in inc.keys}
            seen = min((feats[i].end for i in run if feats[i].end > bad[j].first_time), default=end)
            first_alarm[j] = min(first_alarm.get(j, math.inf), seen)
    res.incidents += len(bad)
    res.days += (stream.end - stream.test_start) / 86400
    for j, t in enumerate(bad):
        if j not in first_alarm:
            res.missed_kinds.append(t.kind)
            continue
        res.detected += 1
        res.delays.append(max(0.0, first_alarm[j] - t.first_time))
        got = found_keys[j]
        res.truth_keys += len(t.keys)
        res.found_true += len(got & t.keys)
        res.found += len(got)
        res.wrong += len(got - t.keys)
        row = res.by_kind.setdefault(t.kind, [0.0] * 7)
        for i, v in enumerate((0, 1, first_alarm[j] - t.first_time, len(t.keys), len(got & t.keys), len(got),
                               len(got - t.keys))):  # fmt: skip
            row[i] += v
    for t in bad:
        res.by_kind.setdefault(t.kind, [0.0] * 7)[0] += 1


def _cause(truths: list[Truth], start: float, end: float) -> str:
    for t in truths:
        if not t.bad and t.planned - 60 <= end and start <= t.planned + 3600:
            return t.kind
    for t in truths:
        if t.bad and t.first_time - 3600 <= end and start <= t.last_time + 3600:
            return f"near-{t.kind}"
    return "ordinary"


def run(args: argparse.Namespace) -> int:
    patterns: list[tuple[str, Callable[[int], list[tuple[float, str, int]]]]] = []
    if args.pattern in ("trace", "both"):
        writes = trace_writes(Path(args.data))
        patterns.append(("cloudphysics", lambda _seed: writes))
    if args.pattern in ("synthetic", "both"):
        patterns.append(("synthetic", lambda seed: synthetic_writes(seed + 1000)))
    configs: list[tuple[str, Callable[[list[WindowFeatures]], Detector]]] = [
        ("isolation-forest", lambda w: WindowDetector.fit(w, "isolation-forest")),
        ("zscore (per-feature tails)", lambda w: WindowDetector.fit(w, "zscore")),
        ("isolation-forest alone", lambda w: WindowDetector.fit(w, "isolation-forest", per_feature=False)),
        ("autoencoder", lambda w: WindowDetector.fit(w, "autoencoder")),
        ("baseline: rules", lambda w: RuleDetector.fit(w)),
        ("baseline: write-rate z", lambda w: WriteRateZ(w)),
    ]
    if args.models:
        configs = [c for c in configs if any(m in c[0] for m in args.models.split(","))]
    started = time.perf_counter()
    for pname, make in patterns:
        results = {name: Result() for name, _ in configs}
        gen_s = 0.0
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            t0 = time.perf_counter()
            stream = generate(
                make(seed), seed=seed, time_factor=args.time_factor, train_hours=args.train_hours,
                test_hours=args.test_hours, bad_each=args.bad_each,
            )  # fmt: skip
            buckets, tr, te, en = _windows(stream, args.interval)
            train_obs = [o for i in range(tr, te) for o in buckets.get(i, ())]
            context = learn_context(train_obs)
            feats = {
                i: window_features(TABLE, i * args.interval, (i + 1) * args.interval, buckets.get(i, ()), context)
                for i in range(tr, en)
            }
            gen_s += time.perf_counter() - t0
            training = [feats[i] for i in range(tr, te)]
            for name, fit in configs:
                res = results[name]
                t1 = time.perf_counter()
                det = fit(training)
                res.fit_s += time.perf_counter() - t1
                _evaluate(stream, det, buckets, feats, range(te, en), context, args.threshold, res)
            print(f"  [{pname} seed {seed}: {len(stream.observations):,} changes, {len(training)} training windows, "
                  f"{sum(t.bad for t in stream.truths)} incidents]", flush=True)  # fmt: skip
        _print(pname, args, results, gen_s)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def _print_kinds(name: str, r: Result) -> None:
    print(f"\n  {name} by incident kind: detected/incidents, mean delay, key recall, wrongly included")
    for kind, (n, det, dsum, tk, ft, fd, wr) in sorted(r.by_kind.items()):
        delay = dsum / det if det else float("nan")
        print(f"    {kind:20} {det:3.0f}/{n:<3.0f} {delay:6.0f}s  {ft / tk if tk else float('nan'):7.4f} "
              f"{wr / fd if fd else float('nan'):7.4f}")  # fmt: skip


def _print(pname: str, args: argparse.Namespace, results: dict[str, Result], gen_s: float) -> None:
    print(f"\n== {pname}: {args.seeds} seeds x {args.test_hours:g} h test after {args.train_hours:g} h training, "
          f"{args.interval:g}-s windows, threshold {args.threshold}, time factor {args.time_factor:g} "
          f"(generation + features {gen_s:.0f} s)")  # fmt: skip
    head = (
        f"{'detector':30} {'recall':>8} {'FA/day':>7} {'delay p50':>9} {'key recall':>10} {'wrong':>7} "
        f"{'fit s':>6} {'score s':>7}  missed / false alarms"
    )
    print(head)
    print("goal                           >= 0.95    <= 1    <= 60 s     >= 0.99 <= 0.01")
    for name, r in results.items():
        recall = r.detected / r.incidents if r.incidents else float("nan")
        delay = statistics.median(r.delays) if r.delays else float("nan")
        krec = r.found_true / r.truth_keys if r.truth_keys else float("nan")
        wrong = r.wrong / r.found if r.found else float("nan")
        fa = r.false_alarms / r.days if r.days else float("nan")
        notes = ",".join(sorted(set(r.missed_kinds))) or "-"
        causes = ",".join(f"{c}x{r.fa_causes.count(c)}" for c in sorted(set(r.fa_causes))) or "-"
        print(
            f"{name:30} {recall:8.3f} {fa:7.2f} {delay:8.0f}s {krec:10.4f} {wrong:7.4f} {r.fit_s:6.1f} "
            f"{r.score_s:7.1f}  {notes} / {causes}"
        )
    first = next(iter(results))
    _print_kinds(first, results[first])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the CloudPhysics CSV (writes are replayed)")
    ap.add_argument("--pattern", choices=("trace", "synthetic", "both"), default="both")
    ap.add_argument("--seeds", type=int, default=3, help="how many seeds")
    ap.add_argument("--first-seed", type=int, default=0, help="the first seed (held-out seeds: 3 and on)")
    ap.add_argument("--time-factor", type=float, default=1.0, help="stretch (>1) or compress (<1) the trace's time")
    ap.add_argument("--train-hours", type=float, default=8.0)
    ap.add_argument("--test-hours", type=float, default=24.0)
    ap.add_argument("--bad-each", type=int, default=2, help="incidents of each kind per seed")
    ap.add_argument("--interval", type=float, default=60.0)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--models", default="", help="comma-separated substrings of the detectors to run")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

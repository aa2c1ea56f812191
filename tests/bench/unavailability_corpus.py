"""A fault-injection corpus of health histories for the unavailability model (issue #18): copies sampled every
10 s with healthy noise, false-alarm-like blips that recover by themselves, and injected faults that end in an
outage (the probe fails for several samples). Seeded and deterministic: the same seed gives the same histories.

    python -m tests.bench.unavailability_corpus --seed 0 --copies 10 --hours 24 [--out corpus.jsonl]

Faults (precursor, then an outage of 3-15 min): ``disk_fill`` (free space falls to zero), ``latency_rise`` (p99
climbs to a timeout), ``error_crash`` (error bursts, then a crash), ``crash_loop`` (restarts a few minutes apart,
then a crash that lasts), ``lag_cutoff`` (a mirror's lag grows, then it is cut off), ``sudden_loss`` (no precursor:
a kill -9 or a lost node, which no model can see coming). Blips: a latency spike, an error blip, one restart (a
deploy), a disk that fills fast and is then compacted, a lag spike, one or two failed probes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from chronoshard.shardnode.unavailability.types import HealthPoint

STEP = 10.0
T0 = 1_765_000_000.0
FAULTS = ("disk_fill", "latency_rise", "error_crash", "crash_loop", "lag_cutoff", "sudden_loss")
FAULT_WEIGHTS = (0.2, 0.2, 0.18, 0.17, 0.15, 0.1)
BLIPS = ("latency_spike", "error_blip", "deploy_restart", "fill_then_compact", "lag_spike", "probe_blip")


@dataclass(frozen=True)
class Fault:
    """An injected fault: its kind, where its precursor starts and where its outage starts (times)."""

    kind: str
    precursor_start: float
    outage_start: float
    outage_end: float


@dataclass
class Copy:
    """One copy's signals being built (index arrays over its samples)."""

    rng: np.random.Generator
    mirror: bool
    p50: np.ndarray
    p99: np.ndarray
    err: np.ndarray
    free: np.ndarray
    restarts: np.ndarray
    lag: np.ndarray
    up: np.ndarray

    def down(self, i: int, j: int) -> None:
        self.up[i:j] = False

    def restart_from(self, i: int, n: int = 1) -> None:
        self.restarts[i:] += n


def _healthy(rng: np.random.Generator, n: int, mirror: bool) -> Copy:
    base = rng.uniform(1.0, 5.0)
    slow = np.cumsum(rng.normal(0, 0.01, n))
    slow -= np.convolve(slow, np.ones(360) / 360, mode="same")  # a wandering level, no long drift
    p50 = base * np.exp(0.3 * slow + rng.normal(0, 0.15, n))
    p99 = p50 * rng.uniform(3.0, 8.0) * np.exp(rng.normal(0, 0.25, n))
    err = np.where(rng.random(n) < 0.05, rng.uniform(0.0, 0.01, n), 0.0)
    free = np.clip(rng.uniform(0.35, 0.8) - np.arange(n) * rng.uniform(0.0, 0.01) / 360 + rng.normal(0, 0.001, n),
                   0.3, 1.0)
    lag = np.abs(rng.normal(0.2, 0.1, n)) if mirror else np.full(n, np.nan)
    return Copy(rng, mirror, p50, p99, err, free, np.full(n, float(rng.integers(0, 5))), lag, np.ones(n, dtype=bool))


def _ramp(n: int, power: float = 1.0) -> np.ndarray:
    return np.linspace(0.0, 1.0, n) ** power


# ---- faults: each shapes [i, o) as its precursor; the outage [o, e) is applied by the caller ---------------------
def _disk_fill(c: Copy, i: int, o: int) -> None:
    start = c.free[i]
    c.free[i:o] = start * (1.0 - _ramp(o - i)) + c.rng.normal(0, 0.001, o - i)
    c.p99[i:o] *= 1.0 + 2.0 * _ramp(o - i, 4.0)


def _latency_rise(c: Copy, i: int, o: int) -> None:
    target = c.rng.uniform(4000.0, 10000.0)
    growth = np.exp(np.log(target / np.median(c.p99[i:o])) * _ramp(o - i, c.rng.uniform(1.0, 2.0)))
    c.p99[i:o] *= growth
    c.p50[i:o] *= np.sqrt(growth)
    c.err[i:o] += 0.2 * _ramp(o - i, 3.0)


def _error_crash(c: Copy, i: int, o: int) -> None:
    n = o - i
    bursts = (c.rng.random(n) < 0.1 + 0.5 * _ramp(n)) * c.rng.uniform(0.05, 0.7, n) * (0.2 + _ramp(n))
    c.err[i:o] = np.clip(c.err[i:o] + bursts, 0.0, 1.0)


def _crash_loop(c: Copy, i: int, o: int) -> None:
    k = i
    while k < o - 6:
        c.down(k, k + int(c.rng.integers(1, 3)))
        c.restart_from(k + 2)
        c.err[k + 2:min(o, k + 8)] += c.rng.uniform(0.05, 0.3)
        k += int(c.rng.integers(9, 24))  # 1.5 to 4 min apart


def _lag_cutoff(c: Copy, i: int, o: int) -> None:
    target = c.rng.uniform(300.0, 900.0)
    c.lag[i:o] = c.lag[i:o] + target * _ramp(o - i, c.rng.uniform(1.0, 2.5))


def _sudden(c: Copy, i: int, o: int) -> None:
    return


SHAPERS: dict[str, Callable[[Copy, int, int], None]] = {
    "disk_fill": _disk_fill, "latency_rise": _latency_rise, "error_crash": _error_crash,
    "crash_loop": _crash_loop, "lag_cutoff": _lag_cutoff, "sudden_loss": _sudden}
PRECURSOR_MIN = {"disk_fill": (10, 60), "latency_rise": (5, 40), "error_crash": (3, 20), "crash_loop": (6, 25),
                 "lag_cutoff": (10, 40), "sudden_loss": (0, 0)}


def _after_outage(c: Copy, kind: str, e: int) -> None:
    c.restart_from(e)
    if kind == "disk_fill":
        c.free[e:] = np.clip(c.free[e:] + c.rng.uniform(0.4, 0.6), 0.0, 0.95)  # the volume was expanded
    if kind == "lag_cutoff":
        c.lag[e:] = np.abs(c.rng.normal(0.2, 0.1, len(c.lag) - e))  # re-seeded, caught up


# ---- blips ---------------------------------------------------------------------------------------------------
def _blip(c: Copy, kind: str, i: int) -> int:
    """Shape a blip starting at ``i``; returns its length in samples."""
    r = c.rng
    if kind == "latency_spike":
        n = int(r.integers(6, 19))
        c.p99[i:i + n] *= r.uniform(5.0, 20.0)
    elif kind == "error_blip":
        n = int(r.integers(3, 10))
        c.err[i:i + n] += r.uniform(0.1, 0.3)
    elif kind == "deploy_restart":
        n = 1
        c.down(i, i + 1)
        c.restart_from(i + 1)
    elif kind == "fill_then_compact":
        n = int(r.integers(60, 120))
        drop = min(c.free[i] - 0.1, r.uniform(0.1, 0.3))
        c.free[i:i + n] -= drop * _ramp(n)
        c.free[i + n:] = np.maximum(c.free[i + n:] - drop * 0.1, 0.1)
    elif kind == "lag_spike" and c.mirror:
        n = int(r.integers(12, 40))
        c.lag[i:i + n] += r.uniform(30.0, 120.0) * np.sin(np.linspace(0, math.pi, n))
    else:  # a probe blip (also what a lag spike is on a primary)
        n = int(r.integers(1, 3))
        c.down(i, i + n)
    return n


def generate_copy(seed: int, copy: int, hours: float) -> tuple[list[HealthPoint], list[Fault]]:
    """One copy's history and the faults injected into it."""
    rng = np.random.default_rng([seed, copy])
    n = int(hours * 3600 / STEP)
    c = _healthy(rng, n, mirror=copy % 2 == 1)
    faults: list[Fault] = []
    k = int(rng.integers(360, 720))  # 1-2 h of plain health first
    while k < n - 720:
        if rng.random() < 0.4:
            kind = str(rng.choice(FAULTS, p=FAULT_WEIGHTS))
            if kind == "lag_cutoff" and not c.mirror:
                kind = "latency_rise"
            lo, hi = PRECURSOR_MIN[kind]
            o = k + int(rng.uniform(lo, hi) * 6)
            e = o + int(rng.uniform(3, 15) * 6)
            if e >= n:
                break
            SHAPERS[kind](c, k, o)
            c.down(o, e)
            _after_outage(c, kind, e)
            faults.append(Fault(kind, T0 + k * STEP, T0 + o * STEP, T0 + (e - 1) * STEP))
            k = e
        else:
            k += _blip(c, str(rng.choice(BLIPS)), k)
        k += int(rng.uniform(30, 150) * 6)  # 30 min to 2.5 h apart
    return _points(c, n), faults


def _opt(v: float) -> float | None:
    return None if math.isnan(v) else round(float(v), 6)


def _points(c: Copy, n: int) -> list[HealthPoint]:
    free = np.clip(c.free, 0.0, 1.0)
    err = np.clip(c.err, 0.0, 1.0)
    out = []
    for i in range(n):
        t = T0 + i * STEP
        if not c.up[i]:
            out.append(HealthPoint(time=t, up=False))  # the probe got no answer: nothing else is known
            continue
        out.append(HealthPoint(time=t, up=True, latency_p50_ms=round(float(c.p50[i]), 3),
                               latency_p99_ms=round(float(c.p99[i]), 3), error_rate=round(float(err[i]), 6),
                               capacity_free_ratio=round(float(free[i]), 6), restarts=int(c.restarts[i]),
                               lag_seconds=_opt(c.lag[i])))
    return out


def corpus(seed: int, copies: int = 10, hours: float = 24.0) -> list[tuple[list[HealthPoint], list[Fault]]]:
    """``copies`` histories of ``hours`` each for ``seed``, with their injected faults."""
    return [generate_copy(seed, i, hours) for i in range(copies)]


def main(argv: list[str] | None = None) -> None:
    """Write a corpus as JSON lines: one object per copy with its points and faults."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--out", default="-")
    args = ap.parse_args(argv)
    out = sys.stdout if args.out == "-" else open(args.out, "w")
    for i, (points, faults) in enumerate(corpus(args.seed, args.copies, args.hours)):
        out.write(json.dumps({"seed": args.seed, "copy": i, "points": [asdict(p) for p in points],
                              "faults": [asdict(f) for f in faults]}) + "\n")
    if out is not sys.stdout:
        out.close()


if __name__ == "__main__":
    main()

"""Per-table request-rate forecast for the next windows (Holt's linear exponential smoothing).

Counts requests per fixed window; each closed window updates a level and a trend; the forecast
for h windows ahead is level + h * trend, never below zero. Pure: times in, numbers out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_MAX_GAP = 1000  # windows


@dataclass
class _Series:
    window_index: int
    count: int = 0
    level: float | None = None
    trend: float = 0.0


@dataclass
class RateForecaster:
    """Request rate per table (requests/s) forecast for the next `horizon` windows."""

    window_s: float = 60.0
    horizon: int = 5
    alpha: float = 0.5
    beta: float = 0.2
    _series: dict[str, _Series] = field(default_factory=dict)

    def _close(self, s: _Series, upto: int) -> None:
        # Close every window before `upto`; empty windows count as zero requests. After a gap longer than
        # the memory of the smoothing, the table is simply idle: reset instead of looping over every window.
        if upto - s.window_index > _MAX_GAP:
            s.level, s.trend, s.count, s.window_index = 0.0, 0.0, 0, upto
            return
        while s.window_index < upto:
            rate = s.count / self.window_s
            if s.level is None:
                s.level = rate
            else:
                prev = s.level
                s.level = self.alpha * rate + (1 - self.alpha) * (s.level + s.trend)
                s.trend = self.beta * (s.level - prev) + (1 - self.beta) * s.trend
            s.count = 0
            s.window_index += 1

    def observe(self, table: str, t: float) -> None:
        """Count one request of `table` at time t (seconds)."""
        w = int(t // self.window_s)
        s = self._series.get(table)
        if s is None:
            s = self._series[table] = _Series(window_index=w)
        if w > s.window_index:
            self._close(s, w)
        s.count += 1

    def forecast(self, now: float) -> dict[str, list[float]]:
        """Expected requests/s of each table for windows 1..horizon after the current one."""
        w = int(now // self.window_s)
        out: dict[str, list[float]] = {}
        for table, s in self._series.items():
            if w > s.window_index:
                self._close(s, w)
            if s.level is None:
                continue
            out[table] = [max(0.0, s.level + h * s.trend) for h in range(1, self.horizon + 1)]
        return out

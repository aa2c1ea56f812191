"""When a finished container starts again: restartPolicy and kubelet's crash-loop back-off (pure)."""

from __future__ import annotations

from dataclasses import dataclass

BACKOFF_CAP = 300.0
BACKOFF_RESET_AFTER = 600.0  # a container that ran this long starts its back-off from zero again


def should_restart(policy: str, exit_code: int) -> bool:
    """Always restarts; OnFailure restarts on a non-zero exit; Never does not."""
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


@dataclass
class Backoff:
    """Delays before successive restarts: 0 for the first, then base, 2*base, ... capped at ``cap``."""

    base: float = 10.0
    cap: float = BACKOFF_CAP
    reset_after: float = BACKOFF_RESET_AFTER
    current: float = 0.0  # the delay the next restart will wait
    last: float = 0.0  # the delay chosen for the most recent restart

    def next_delay(self, ran_for: float) -> float:
        """The wait before restarting a container that just ended after running ``ran_for`` seconds."""
        if ran_for >= self.reset_after:
            self.current = 0.0
        self.last = self.current
        self.current = self.base if self.current == 0 else min(self.current * 2, self.cap)
        return self.last

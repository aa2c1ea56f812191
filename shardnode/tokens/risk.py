"""The unavailability model's lifecycle in the service: load ``model.bin`` (HMAC-checked) at start, predict per
copy and per member, retrain in a worker thread, save; the rule-based risk (with one log line) while the model is
untrained, corrupt or configured off (``prediction.model: rules``). The model itself is shardnode/unavailability/.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chronoshard.shardnode.unavailability.model import UnavailabilityModel
    from chronoshard.shardnode.unavailability.types import HealthPoint, Risk

# The model package (shardnode/unavailability/) is imported when first used, not when this module is: the service
# still issues tokens (nothing above temporary) if the model cannot be loaded at all.

log = logging.getLogger("chronoshard.tokens")

MODEL_FILE = "model.bin"
MAC_BYTES = 32
RETRAIN_SECONDS = 3600.0
MIN_HISTORY_SECONDS = 3600.0


@dataclass
class ModelState:
    """What ``GET /v1/risk`` and ``/v1/status`` say of the model."""

    trained: bool = False
    trained_at: float | None = None
    samples: int = 0
    reason: str | None = "not trained yet"
    fits: int = 0
    last_fit_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"trained": self.trained, "trainedAt": self.trained_at, "samples": self.samples,
                "reason": self.reason, "fits": self.fits, "lastFitSeconds": self.last_fit_seconds}


def seal(body: bytes, key: bytes) -> bytes:
    """HMAC-SHA256 over the model's bytes, in front of them."""
    return hmac.new(key, body, hashlib.sha256).digest() + body


def unseal(blob: bytes, key: bytes) -> bytes:
    """The model's bytes if the HMAC matches (ModelCorrupt otherwise)."""
    from chronoshard.shardnode.unavailability.types import ModelCorrupt

    mac, body = blob[:MAC_BYTES], blob[MAC_BYTES:]
    if len(mac) != MAC_BYTES or not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise ModelCorrupt("HMAC mismatch (tampered, or saved under another signing key)")
    return body


class RiskEngine:
    """One model for every copy of the MirrorSet (copies are alike: nodes of one image)."""

    def __init__(self, data_dir: Path, windows: Sequence[float], kind: str, mac_key: Callable[[], bytes],
                 down_after: int = 3) -> None:
        self.path = data_dir / MODEL_FILE
        self.windows, self.kind, self.mac_key, self.down_after = tuple(windows), kind, mac_key, down_after
        self.model: UnavailabilityModel | None = None
        self.state = ModelState()
        self.lock = threading.Lock()  # the fit thread swaps the model; predictions read it
        self._fallback_logged = False

    def _new(self) -> UnavailabilityModel:
        from chronoshard.shardnode.unavailability.model import UnavailabilityModel

        kind = self.kind if self.kind != "rules" else "logistic-regression"
        return UnavailabilityModel(self.windows, kind=kind, down_after=self.down_after)

    def load(self) -> None:
        """Read the saved model; a missing, tampered or corrupt one leaves the rules in force (one log line)."""
        from chronoshard.shardnode.unavailability.model import UnavailabilityModel
        from chronoshard.shardnode.unavailability.types import ModelCorrupt

        if self.kind == "rules":
            self._fall_back("prediction.model is rules")
            return
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            self._fall_back("no saved model yet")
            return
        try:
            model = UnavailabilityModel.from_bytes(unseal(blob, self.mac_key()))
        except ModelCorrupt as exc:
            self._fall_back(f"saved model not usable: {exc}")
            return
        if tuple(model.windows) != tuple(sorted(self.windows)):
            self._fall_back("saved model was made for other windows")
            return
        with self.lock:
            self.model = model
        st = os.stat(self.path)
        self.state = ModelState(trained=model.trained, trained_at=st.st_mtime, reason=None if model.trained
                                else "saved model is untrained")
        log.info("unavailability model loaded (%s, trained %s)", MODEL_FILE, model.trained)

    def _fall_back(self, reason: str) -> None:
        self.state.reason = reason
        if not self._fallback_logged:  # one line, not one per prediction
            log.warning("unavailability risk from the rules: %s", reason)
            self._fallback_logged = True

    def fit(self, histories: Sequence[Sequence[HealthPoint]]) -> ModelState:
        """Train a new model (blocking: run it in a thread) and, if it trained, save it and put it in force."""
        if self.kind == "rules":
            return self.state
        started = time.monotonic()
        model = self._new()
        report = model.fit(histories)
        samples = sum(len(h) for h in histories)
        took = time.monotonic() - started
        if not report.trained:
            self.state.reason = report.reason
            self.state.samples, self.state.last_fit_seconds = samples, took
            self.state.fits += 1
            self._fall_back(f"not trained: {report.reason}")
            return self.state
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(seal(model.to_bytes(), self.mac_key()))
        os.replace(tmp, self.path)
        with self.lock:
            self.model = model
        self.state = ModelState(trained=True, trained_at=time.time(), samples=samples, reason=None,
                                fits=self.state.fits + 1, last_fit_seconds=took)
        self._fallback_logged = False
        log.info("unavailability model trained on %d samples in %.1f s", samples, took)
        return self.state

    def predict(self, history: Sequence[HealthPoint], now: float) -> Risk:
        """The risk of one copy."""
        from chronoshard.shardnode.unavailability.rules import rule_risk

        with self.lock:
            model = self.model
        if model is None or not model.trained:
            return rule_risk(list(history), now, self.windows)
        return model.predict(history, now)


def combine(risks: Mapping[str, Risk], windows: Sequence[float]) -> Risk:
    """A member's risk from its copies': the highest per window (any shard down makes the store unavailable)."""
    from chronoshard.shardnode.unavailability.types import Risk

    if not risks:
        return Risk({w: 0.0 for w in windows}, "rules", ["no samples yet"])
    worst = max(risks.values(), key=lambda r: min(r.probabilities.items())[1] if r.probabilities else 0.0)
    probs = {w: max(r.probabilities.get(w, 0.0) for r in risks.values()) for w in windows}
    source = "model" if any(r.source == "model" for r in risks.values()) else "rules"
    return Risk(probs, source, list(worst.drivers))

"""The token service process's state (``TokenService``) and its app: the registry, the signing keys, the
config, the health sampler with the risk model, predictive issuance and revocation pushes, on the shared scaffold.
Routes are shardnode/tokens/api.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from chronoshard.shardnode.serving.scaffold import GUARD, Probes, create_server_app

from . import api, predictive
from .config import ConfigFile, ServiceConfig
from .health import HealthStore, Histories, Sample, load_history, probe, store_healthy
from .issuance import ScopeReviewer, mint
from .metrics import TokenMetrics
from .peers import Peers
from .registry import Registry
from .revocation import Pusher, drop_targets, targets
from .risk import MIN_HISTORY_SECONDS, RETRAIN_SECONDS, RiskEngine, combine
from .signing import SigningDir
from .tiers import Placement, StoreHealth, placement

if TYPE_CHECKING:
    from chronoshard.shardnode.unavailability.types import HealthPoint, Risk

log = logging.getLogger("chronoshard.tokens")

PRUNE_SECONDS = 3600.0
# The newest samples of each copy given to the model for a prediction (the model reads the last hour).
PREDICT_SAMPLES = 720


@dataclass(frozen=True)
class Settings:
    """Where the process's files are."""

    config_path: Path
    signing_dir: Path
    data_dir: Path


@dataclass
class MemberRisk:
    """The risk of one member now, and of each of its copies."""

    store: str
    risk: Risk
    copies: dict[str, Risk]
    healthy: bool


class TokenService:
    """The process's state."""

    def __init__(self, settings: Settings) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.config_file = ConfigFile(settings.config_path)
        self.signing = SigningDir(settings.signing_dir)
        self.registry = Registry(settings.data_dir / "tokens.sqlite3")
        self.health = HealthStore(settings.data_dir / "risk.sqlite3")
        self.histories = Histories()
        self.metrics = TokenMetrics()
        self.peers = Peers()
        self.pusher = Pusher(self.peers, lambda: self.config_file.current, self.metrics.push_seconds.observe)
        cfg = self.config_file.current
        self.engine = RiskEngine(settings.data_dir, cfg.windows if cfg else (300.0, 900.0, 1800.0),
                                 cfg.model if cfg else "rules", lambda: self.signing.keys.model_key(),
                                 cfg.failure_threshold if cfg else 3)
        self.reviewer = ScopeReviewer(None)
        self.risks: dict[str, MemberRisk] = {}
        self.calm: dict[str, int] = {}  # store -> consecutive healthy samples below the threshold
        self.sampled = 0
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self._last_prune = 0.0
        self._last_fit = 0.0
        self._fitting = False
        self._placements: tuple[Placement, ...] = ()  # the placements the last pre-issue scan acted on

    # ---- lifecycle ----
    async def start(self, app: web.Application) -> None:
        """Open the peer session, load the model and the histories, start sampling and the push retries."""
        if GUARD in app:
            self.reviewer = ScopeReviewer(app[GUARD].api)
        self.peers.open(app)
        self.engine.load()
        self._load_local_history()
        self.stopping.clear()
        self.tasks = [asyncio.create_task(self._sample_loop()), asyncio.create_task(self.pusher.run(self.stopping))]

    async def shutting_down(self, app: web.Application) -> None:
        """Stop the loops."""
        self.stopping.set()

    async def stop(self, app: web.Application) -> None:
        """Wait for the loops, close the stores and the session."""
        self.stopping.set()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.peers.close()
        self.registry.close()
        self.health.close()

    def readiness(self) -> dict[str, Any]:
        """Ready once a config is in force and keys are loaded."""
        cfg = self.config_file.current
        return {"ready": cfg is not None, "config": None if cfg else (self.config_file.error or "missing"),
                "kid": self.signing.keys.kid, "model": self.engine.state.to_json()}

    # ---- health, risk, predictive issuance ----
    def _load_local_history(self) -> None:
        since = time.time() - 2 * 3600
        for copy_id in self.health.copies():
            for sample in self.health.load(copy_id, since):
                self.histories.add(sample)

    async def _load_remote_history(self, cfg: ServiceConfig) -> None:
        timeout = max(1.0, cfg.probe_interval)
        for copy in cfg.copies():
            since = self.health.last_time(copy.copy_id)
            samples = await load_history(self.peers, copy, since, timeout)
            if samples:
                self.health.add(samples)
                for s in samples[-PREDICT_SAMPLES:]:
                    self.histories.add(s)

    async def _sample_loop(self) -> None:
        loaded = False
        while not self.stopping.is_set():
            self.config_file.poll()
            self.signing.poll()
            cfg = self.config_file.current
            interval = cfg.probe_interval if cfg else 2.0
            if cfg is not None:
                try:
                    if not loaded:
                        await self._load_remote_history(cfg)
                        loaded = True
                    await self.sample_once(cfg)
                except Exception:  # one bad round must not end sampling
                    log.exception("health sampling round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval)

    def _engine_for(self, cfg: ServiceConfig) -> None:
        """A new engine (and the saved model, if it fits) when the config's windows, model kind or outage length
        changed, or the first config arrived after the start."""
        e = self.engine
        if (tuple(cfg.windows), cfg.model, cfg.failure_threshold) == (tuple(e.windows), e.kind, e.down_after):
            return
        self.engine = RiskEngine(self.settings.data_dir, cfg.windows, cfg.model, lambda: self.signing.keys.model_key(),
                                 cfg.failure_threshold)
        self.engine.load()
        self._last_fit = 0.0  # train for the new settings at the next round with enough history

    async def sample_once(self, cfg: ServiceConfig) -> None:
        """Probe every copy once, store, update the risks, pre-issue what the new tier asks for."""
        self._engine_for(cfg)
        timeout = min(5.0, max(0.5, cfg.probe_interval))
        samples = await asyncio.gather(*(probe(self.peers, c, timeout) for c in cfg.copies()))
        self.health.add(samples)
        for s in samples:
            self.histories.add(s)
        self.sampled += 1
        now = time.time()
        # Off the event loop: requests keep being answered while the copies' risks are computed.
        self.update_risk(cfg, now, await asyncio.to_thread(self.predict_all, cfg, now))
        await self.pre_issue(cfg, time.time())
        drop_targets(self.pusher, targets(cfg))
        await asyncio.to_thread(self.registry.checkpoint)
        self._housekeeping(cfg)

    def points(self, copy_id: str) -> list[HealthPoint]:
        """A copy's recent samples as the model's points."""
        return self.histories.points(copy_id, PREDICT_SAMPLES)

    def predict_all(self, cfg: ServiceConfig, now: float) -> dict[str, Risk]:
        """Every copy's risk (run in a worker thread: milliseconds of numpy per copy)."""
        return {c.copy_id: self.engine.predict(self.points(c.copy_id), now) for c in cfg.copies()}

    def update_risk(self, cfg: ServiceConfig, now: float, predicted: Mapping[str, Risk] | None = None) -> None:
        """Every member's risk from its copies', the calm counters, the gauges."""
        predicted = self.predict_all(cfg, now) if predicted is None else predicted
        for member in cfg.members:
            copies = {c.copy_id: predicted[c.copy_id] for c in member.shards if c.copy_id in predicted}
            risk = combine(copies, cfg.windows)
            healthy = store_healthy(cfg, self.histories, member.store)
            self.risks[member.store] = MemberRisk(member.store, risk, copies, healthy)
            calm = healthy and self.short_risk(risk, cfg) < cfg.threshold
            self.calm[member.store] = self.calm.get(member.store, 0) + 1 if calm else 0
            for w, p in risk.probabilities.items():
                self.metrics.risk.labels(member.store, str(int(w))).set(p)

    def short_risk(self, risk: Risk, cfg: ServiceConfig) -> float:
        """The risk over the shortest window (what the tiers act on)."""
        return float(risk.probabilities.get(cfg.windows[0], max(risk.probabilities.values(), default=0.0)))

    def target(self, cfg: ServiceConfig, current: str | None) -> Placement:
        """The placement a token of tier ``current`` should have now."""
        member = self.risks.get(cfg.active_store)
        healthy = member.healthy if member else False
        risk = self.short_risk(member.risk, cfg) if member else 0.0
        if member is None:
            # Before the first sample the store's state is unknown: promise nothing more than temporary.
            healthy = False
        health = StoreHealth(healthy, self.calm.get(cfg.active_store, 0))
        return placement(current, health, risk, cfg.threshold, cfg.operation, cfg.active_store)

    def lsn(self, cfg: ServiceConfig, store: str) -> dict[str, int]:
        """The applied LSN of every shard of ``store`` at its last sample (a provisional token's watermark)."""
        out: dict[str, int] = {}
        member = cfg.member(store)
        for copy in member.shards if member else ():
            last = self.histories.last(copy.copy_id)
            repl = (last.doc.get("replication") or {}) if last else {}
            applied = repl.get("appliedLsn") if isinstance(repl, dict) else None
            if isinstance(applied, int) and not isinstance(applied, bool):
                out[str(copy.index)] = applied
        return out

    async def pre_issue(self, cfg: ServiceConfig, now: float) -> int:
        """Pre-issue replacements for every holder whose tier the store no longer matches (docs/tokens.md).

        The registry is scanned only when a placement changed: tokens issued or refreshed since then already have
        the placement in force, so a scan per sample would only cost (it reads every token of the last hour)."""
        marks = tuple(self.target(cfg, tier) for tier in (None, "valid", "temporary", "provisional"))
        if marks == self._placements:
            return 0
        self._placements = marks
        held = [r.held(now) for r in self.registry.recent(now - predictive.RECENT_SECONDS)]
        for tok in predictive.stale_replacements(held, self.target(cfg, None)):
            self.registry.clear_replacement(tok.token_id)
        done = 0
        for tok in predictive.pre_issues(held, self.target(cfg, None), now):
            place = self.target(cfg, tok.tier)
            if place.tier == tok.tier and place.store == tok.store:
                continue  # hysteresis: this holder's tier stays (e.g. temporary until calm long enough)
            row = self.registry.get(tok.token_id)
            if row is None:
                continue
            token, new = mint(cfg, self.signing.keys, row.service, row.scope, place, now, self.lsn(cfg, place.store),
                              delivered=False)
            self.registry.insert(new)
            self.registry.set_replacement(row.token_id, token, place.tier, place.store)
            self.metrics.issued.labels(place.tier, "preissue").inc()
            done += 1
        if done:
            log.info("pre-issued %d %s tokens", done, self.target(cfg, None).tier)
        return done

    def _housekeeping(self, cfg: ServiceConfig) -> None:
        now = time.time()
        if now - self._last_prune > PRUNE_SECONDS:
            self._last_prune = now
            self.registry.prune(now)
            self.health.prune(now)
        if (cfg.model != "rules" and not self._fitting and now - self._last_fit > RETRAIN_SECONDS
                and self.health.span() >= MIN_HISTORY_SECONDS):
            self._last_fit = now
            self._fitting = True
            self.tasks.append(asyncio.create_task(self._fit()))

    def _train(self) -> None:
        """Read every copy's kept samples (on a connection of this thread) and fit: seconds of work for 7 days of
        samples, all of it off the event loop."""
        from chronoshard.shardnode.unavailability.types import point_from_health

        store = HealthStore(self.settings.data_dir / "risk.sqlite3")
        try:
            histories = [[point_from_health(s.doc, s.time, s.up) for s in store.load(c)] for c in store.copies()]
        finally:
            store.close()
        self.engine.fit(histories)

    async def _fit(self) -> None:
        try:
            await asyncio.to_thread(self._train)
        except Exception:
            log.exception("model training failed; the previous model or the rules stay in force")
        finally:
            self._fitting = False

    def risk_document(self) -> dict[str, Any]:
        """``GET /v1/risk``."""
        cfg = self.config_file.current
        members = []
        for store, mr in self.risks.items():
            members.append({
                "store": store, "risk": _windows(mr.risk.probabilities), "source": mr.risk.source,
                "drivers": mr.risk.drivers, "healthy": mr.healthy,
                "copies": [{"copy": cid, "risk": _windows(r.probabilities), "source": r.source,
                            "drivers": r.drivers, "health": _health(self.histories.last(cid))}
                           for cid, r in mr.copies.items()]})
        state = self.engine.state
        return {"members": members, "threshold": cfg.threshold if cfg else None,
                "activeStore": cfg.active_store if cfg else None,
                "model": {"trained": state.trained, "trainedAt": state.trained_at, "samples": state.samples,
                          "source": "model" if state.trained else "rules", "reason": state.reason}}


SERVICE = web.AppKey("chronoshard_tokens_service", TokenService)


def _windows(probs: Mapping[float, float]) -> dict[str, float]:
    return {str(int(w)): round(float(p), 6) for w, p in sorted(probs.items())}


def _health(sample: Sample | None) -> dict[str, Any] | None:
    if sample is None:
        return None
    return {"time": sample.time, "up": sample.up, "sample": sample.doc}


def create_app(settings: Settings) -> web.Application:
    """The token service's app (the scaffold adds /healthz, /readyz, /metrics, /openapi.json)."""
    service = TokenService(settings)
    probes = Probes(service.metrics.registry, service.readiness)
    return create_server_app(service, probes, api.routes(), key=SERVICE, requests=service.metrics.requests,
                             openapi="tokens")

"""The operator at scale: N ShardSets applied at once on the real API server (pods stay Pending), against a
trivial Kopf operator (one object → one ConfigMap) on the same control plane in the same run.

    python -m tests.bench.bench_operator_scale [--shardsets 1000] [--shards 1] [--clients 16] [--idle 30]
                                                  [--settle 0] [--timeout 900] [--profile PREFIX] [--no-floor]
                                                  [--keep]

Starts etcd, kube-apiserver (service range widened to a /20: one ClusterIP Service per ShardSet) and
kube-controller-manager on 127.0.0.1, installs the CRDs, then for each operator in turn (ours, then the floor):
starts it as a process, waits until it has handled one warm-up object, creates the N objects from ``--clients``
threads, and watches (never polls) until every object has its child (StatefulSet / ConfigMap) and a status whose
observedGeneration is its generation. Then, after ``--settle`` seconds, it stays ``--idle`` seconds to count what
the operator asks the API server for when nothing changes, and stops it.

Reported, ours beside the floor: time to create the N, time from the last create until all converged, reconcile
latency p50/p99 (the operator's own histogram), the operator's API requests per second and per reconcile while
converging and while idle (from the API server's audit log, by user agent, so Kopf's own requests count too),
and the operator's peak RSS (VmHWM). ``--profile PREFIX`` samples our operator with py-spy while it converges
(PREFIX-ours.txt, collapsed stacks) and prints its top frames. Progress goes to stderr, the table to stdout.
Everything started binds 127.0.0.1 and is stopped at the end, also on Ctrl-C (``--keep`` leaves the state dir).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from chronoshard.devcluster.controlplane import ControlPlane, free_port
from chronoshard.operator.metrics import RECONCILE_SECONDS
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.bench import floor_operator

REPO = Path(__file__).resolve().parents[2]
SERVICE_RANGE = "10.96.0.0/20"  # 4,094 ClusterIPs; the default /24 runs out at about 250 ShardSets
OURS_NS, FLOOR_NS, WARM_NS = "scale-ours", "scale-floor", "scale-warmup"
BENCH_AGENT = "chronoshard-bench"
# Everything but the benchmark itself and the control plane's own components is the operator under test.
NOT_OPERATOR = (BENCH_AGENT, "kube-controller-manager", "kube-apiserver", "kubectl")
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                # One line per request, written when it completes (a watch: when it ends).
                "omitStages": ["RequestReceived", "ResponseStarted"], "rules": [{"level": "Metadata"}]}
WATCH_SECONDS = 50


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the operators under test -----------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """One operator under test: how to start it and what its objects and their children are."""

    label: str
    namespace: str
    argv: tuple[str, ...]
    group: str
    version: str
    plural: str
    kind: str
    child: str  # "statefulsets" or "configmaps"
    child_suffix: str  # child name = object name + suffix
    metrics_kind: str

    def manifest(self, name: str, namespace: str, shards: int) -> dict[str, Any]:
        spec: dict[str, Any] = {"shards": shards} if self.kind == "ShardSet" else {"payload": name}
        return {"apiVersion": f"{self.group}/{self.version}", "kind": self.kind,
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def subjects(metrics_port: int) -> dict[str, Subject]:
    py = (sys.executable, "-P", "-m")
    ours = Subject("chronoshard", OURS_NS,
                   (*py, "chronoshard.operator.main", "--all-namespaces", "--standalone",
                    "--metrics-port", str(metrics_port)),
                   "chronoshard.io", "v1alpha1", "shardsets", "ShardSet", "statefulsets", "", "ShardSet")
    floor = Subject("trivial Kopf", FLOOR_NS,
                    (sys.executable, "-P", str(REPO / "tests" / "bench" / "floor_operator.py"),
                     "--metrics-port", str(metrics_port)),
                    floor_operator.GROUP, floor_operator.VERSION, floor_operator.PLURAL, floor_operator.KIND,
                    "configmaps", "-cm", floor_operator.KIND)
    return {"ours": ours, "floor": floor}


@dataclass
class Process:
    """A process we started (its own session, so Ctrl-C reaches it only through us), with its log."""

    argv: tuple[str, ...]
    log: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True, cwd=REPO)
        return self.popen.pid

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in bytes; empty once it has exited."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (0 once it has exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics_text(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def histogram(port: int, name: str, kind: str) -> dict[float, float]:
    """The cumulative buckets ``{le: count}`` of ``name{kind=kind}`` (le=inf included)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text(port)):
        for s in family.samples:
            if s.name == f"{name}_bucket" and s.labels.get("kind") == kind:
                out[float(s.labels["le"])] = s.value
    return out


def counter_sum(port: int, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics_text(port)):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """``histogram_quantile`` (linear within a bucket, as Prometheus does) of the observations between the two
    snapshots; NaN when there were none."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    if not counts or counts[-1] <= 0:
        return float("nan")
    rank = q * counts[-1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in zip(les, counts, strict=True):
        if count >= rank:
            if le == float("inf"):
                return le  # beyond the last finite bucket: reported as "> that bound"
            return prev_le + (le - prev_le) * ((rank - prev_count) / max(count - prev_count, 1e-9))
        prev_le, prev_count = le, count
    return prev_le


# ---- watching for convergence -------------------------------------------------------------------------


@dataclass
class Tracker:
    """Which of the expected objects have their child and an observed generation, and when each first did."""

    expected: set[str]
    child_suffix: str
    children: set[str] = field(default_factory=set)
    observed: set[str] = field(default_factory=set)
    done_at: dict[str, float] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def _check(self, name: str) -> None:
        if name in self.children and name in self.observed and name not in self.done_at:
            self.done_at[name] = time.monotonic()
            self.cond.notify_all()

    def child_seen(self, child_name: str) -> None:
        if not child_name.endswith(self.child_suffix):
            return
        name = child_name[: len(child_name) - len(self.child_suffix)] if self.child_suffix else child_name
        with self.cond:
            if name in self.expected:
                self.children.add(name)
                self._check(name)

    def parent_seen(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        status = obj.get("status") or {}
        with self.cond:
            if name in self.expected and status.get("observedGeneration") == meta.get("generation"):
                self.observed.add(name)
                self._check(name)

    def wait_all(self, deadline: float) -> bool:
        with self.cond:
            while len(self.done_at) < len(self.expected):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 10.0))
        return True


def watch_forever(list_fn: Callable[..., Any], on_object: Callable[[dict[str, Any]], None], stop: threading.Event,
                  *args: Any) -> None:
    """List then watch ``list_fn(*args)`` until ``stop``; every object seen (raw JSON dicts) goes to
    ``on_object``. A watch that ends resumes from its last resourceVersion; one that expired (410) lists again."""
    rv = ""
    while not stop.is_set():
        try:
            if not rv:
                listing = json.loads(list_fn(*args, _preload_content=False).data)
                for item in listing.get("items") or []:
                    on_object(item)
                rv = listing["metadata"]["resourceVersion"]
            for ev in watch.Watch().stream(list_fn, *args, resource_version=rv, timeout_seconds=WATCH_SECONDS,
                                           allow_watch_bookmarks=True, _preload_content=False):
                obj = ev["raw_object"]
                rv = obj["metadata"].get("resourceVersion", rv)
                if ev["type"] in ("ADDED", "MODIFIED"):
                    on_object(obj)
                if stop.is_set():
                    return
        except ApiException as exc:
            if exc.status != 410:
                say(f"watch error {exc.status}: {exc.reason}; listing again")
                time.sleep(1)
            rv = ""
        except Exception as exc:  # a dropped connection: say so and resume from where the watch was
            say(f"watch interrupted ({type(exc).__name__}: {exc}); resuming")
            time.sleep(1)


def start_watches(api: client.ApiClient, subject: Subject, tracker: Tracker, stop: threading.Event
                  ) -> list[threading.Thread]:
    custom = client.CustomObjectsApi(api)
    if subject.child == "statefulsets":
        child_fn: Callable[..., Any] = client.AppsV1Api(api).list_namespaced_stateful_set
    else:
        child_fn = client.CoreV1Api(api).list_namespaced_config_map
    threads = [
        threading.Thread(target=watch_forever, daemon=True,
                         args=(child_fn, lambda o: tracker.child_seen(o["metadata"]["name"]), stop,
                               subject.namespace)),
        threading.Thread(target=watch_forever, daemon=True,
                         args=(custom.list_namespaced_custom_object, tracker.parent_seen, stop, subject.group,
                               subject.version, subject.namespace, subject.plural)),
    ]
    for t in threads:
        t.start()
    return threads


# ---- the audit log: API requests by user agent --------------------------------------------------------


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def operator_requests(audit: Path, start: float, end: float) -> tuple[int, Counter[str]]:
    """Requests received in [start, end] (wall clock) from anyone but the benchmark and the control plane:
    the total and a breakdown by user agent product and verb."""
    total, by = 0, Counter[str]()
    if not audit.exists():
        return 0, by
    with open(audit, encoding="utf-8") as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            agent = ev.get("userAgent") or ""
            if agent.startswith(NOT_OPERATOR) or (ev.get("user") or {}).get("username", "").startswith("system:"):
                continue
            t = _ts(ev.get("requestReceivedTimestamp") or "1970-01-01T00:00:00Z")
            if start <= t <= end:
                total += 1
                by[f"{agent.split('/')[0]} {ev.get('verb')}"] += 1
    return total, by


# ---- one operator -------------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    created: int = 0
    create_s: float = float("nan")
    converge_s: float = float("nan")
    converged: int = 0
    p50: float = float("nan")
    p99: float = float("nan")
    reconciles: float = 0.0
    requests: int = 0
    requests_s: float = float("nan")
    idle_requests_s: float = float("nan")
    idle_reconciles_s: float = float("nan")
    own_client_requests: float = float("nan")
    rss_peak: int = 0
    rss_end: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds while converging, by process
    breakdown: Counter[str] = field(default_factory=Counter)
    profile: list[tuple[str, int]] = field(default_factory=list)

    @property
    def per_reconcile(self) -> float:
        return self.requests / self.reconciles if self.reconciles else float("nan")


def create_all(api: client.ApiClient, subject: Subject, names: list[str], shards: int, clients: int
               ) -> tuple[float, float]:
    """Create every object from ``clients`` threads; returns (first create sent, last create answered), monotonic."""
    custom = client.CustomObjectsApi(api)

    def one(name: str) -> float:
        body = subject.manifest(name, subject.namespace, shards)
        for attempt in range(5):
            try:
                custom.create_namespaced_custom_object(subject.group, subject.version, subject.namespace,
                                                       subject.plural, body)
                break
            except ApiException as exc:
                if exc.status == 409:
                    break
                if exc.status < 500 and exc.status != 429 or attempt == 4:
                    raise
                time.sleep(0.5)
        return time.monotonic()

    first = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        last = max(pool.map(one, names))
    return first, last


def wait_warm(api: client.ApiClient, subject: Subject, shards: int, timeout: float) -> None:
    """Create one object in the warm-up namespace and wait until it converged: the operator's watches run."""
    tracker = Tracker({"warm"}, subject.child_suffix)
    stop = threading.Event()
    warm = dataclasses.replace(subject, namespace=WARM_NS)
    start_watches(api, warm, tracker, stop)
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        warm.group, warm.version, WARM_NS, warm.plural, warm.manifest("warm", WARM_NS, shards))
    ok = tracker.wait_all(time.monotonic() + timeout)
    stop.set()
    if not ok:
        raise RuntimeError(f"{subject.label}: the warm-up object did not converge within {timeout:.0f} s")


class Profiler:
    """py-spy sampling one process into collapsed stacks, until stopped."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.proc = Process((spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "50", "--nonblocking",
                             "-o", str(out)), out.with_suffix(".log"), dict(os.environ))
        self.proc.start()

    def stop(self) -> list[tuple[str, int]]:
        self.proc.stop(signal.SIGINT, grace=60)
        return top_frames(self.out)


def top_frames(path: Path, n: int = 15) -> list[tuple[str, int]]:
    """The frames with the most samples on top of the stack (self time), with their sample counts."""
    own: Counter[str] = Counter()
    if not path.exists():
        return []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            own[stack.split(";")[-1]] += int(count)
    return own.most_common(n)


@dataclass
class Run:
    cp: ControlPlane
    api: client.ApiClient
    args: argparse.Namespace
    state: Path


def measure(run: Run, subject: Subject, port: int, profile: Path | None) -> Result:
    args, res = run.args, Result(subject.label)
    env = {**os.environ, "KUBECONFIG": str(run.cp.kubeconfig)}
    proc = Process(subject.argv, run.state / f"operator-{subject.namespace}.log", env)
    pid = proc.start()
    stop = threading.Event()
    profiler: Profiler | None = None
    try:
        wait_warm(run.api, subject, args.shards, timeout=120)
        say(f"{subject.label}: warm (pid {pid}, RSS {proc_status(pid).get('VmRSS', 0) / 2**20:.0f} MB)")
        names = [f"s{i:05d}" for i in range(args.shardsets)]
        tracker = Tracker(set(names), subject.child_suffix)
        start_watches(run.api, subject, tracker, stop)
        hist0 = histogram(port, "chronoshard_operator_reconcile_duration_seconds", subject.metrics_kind)
        rec0 = counter_sum(port, "chronoshard_operator_reconciles_total", kind=subject.metrics_kind)
        own0 = counter_sum(port, "chronoshard_operator_api_requests_total")
        if profile is not None:
            profiler = Profiler(pid, profile)
        watched = {"operator": pid, **{k: v for k, v in run.cp.pids().items() if k in ("kube-apiserver", "etcd")}}
        cpu0 = {k: cpu_seconds(v) for k, v in watched.items()}
        wall0 = time.time()
        first, last = create_all(run.api, subject, names, args.shards, args.clients)
        res.created, res.create_s = len(names), last - first
        say(f"{subject.label}: created {len(names)} in {res.create_s:.1f} s; waiting for them to converge")
        ok = tracker.wait_all(last + args.timeout)
        end = max(tracker.done_at.values(), default=last) if ok else time.monotonic()
        wall1 = wall0 + (end - first)
        res.cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in watched.items()}
        res.converged = len(tracker.done_at)
        res.converge_s = end - last if ok else float("nan")
        say(f"{subject.label}: {res.converged}/{len(names)} converged, {end - last:.1f} s after the last create")
        if profiler is not None:
            res.profile = profiler.stop()
            profiler = None
        hist1 = histogram(port, "chronoshard_operator_reconcile_duration_seconds", subject.metrics_kind)
        rec1 = counter_sum(port, "chronoshard_operator_reconciles_total", kind=subject.metrics_kind)
        res.p50, res.p99 = quantile(0.5, hist0, hist1), quantile(0.99, hist0, hist1)
        res.reconciles = rec1 - rec0
        own1 = counter_sum(port, "chronoshard_operator_api_requests_total")
        res.own_client_requests = own1 - own0
        # What the operator does once it has settled: resyncs, polls, renewals (--settle lets the passes that
        # the children's own events caused finish first).
        time.sleep(args.settle)
        idle0 = time.time()
        idle_rec0 = counter_sum(port, "chronoshard_operator_reconciles_total", kind=subject.metrics_kind)
        time.sleep(args.idle)
        idle1 = time.time()
        idle_rec1 = counter_sum(port, "chronoshard_operator_reconciles_total", kind=subject.metrics_kind)
        status = proc_status(pid)
        res.rss_peak, res.rss_end = status.get("VmHWM", 0), status.get("VmRSS", 0)
        proc.stop()
        time.sleep(2)  # the audit log is written as requests complete; let the last ones land
        res.requests, res.breakdown = operator_requests(run.cp.audit_log, wall0, wall1)
        res.requests_s = res.requests / max(wall1 - wall0, 1e-9)
        idle_n, _ = operator_requests(run.cp.audit_log, idle0, idle1)
        res.idle_requests_s = idle_n / max(idle1 - idle0, 1e-9)
        res.idle_reconciles_s = (idle_rec1 - idle_rec0) / max(idle1 - idle0, 1e-9)
        return res
    finally:
        stop.set()
        if profiler is not None:
            profiler.stop()
        proc.stop()


# ---- report -------------------------------------------------------------------------------------------


def report(results: dict[str, Result], n: int) -> None:
    ours, floor = results.get("ours"), results.get("floor")

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b and b == b and a == a else "-"

    rows: list[tuple[str, Callable[[Result], float], str]] = [
        ("time to create (s)", lambda r: r.create_s, "{:.1f}"),
        ("converged after the last create (s)", lambda r: r.converge_s, "{:.1f}"),
        ("objects converged", lambda r: float(r.converged), "{:.0f}"),
        ("reconcile p50 (ms)", lambda r: 1000 * r.p50, "{:.0f}"),
        ("reconcile p99 (ms)", lambda r: 1000 * r.p99, "{:.0f}"),
        ("reconciles while converging", lambda r: r.reconciles, "{:.0f}"),
        ("operator API requests while converging", lambda r: float(r.requests), "{:.0f}"),
        ("  per second", lambda r: r.requests_s, "{:.1f}"),
        ("  per reconcile", lambda r: r.per_reconcile, "{:.1f}"),
        ("after converging (--settle, --idle): API requests/s", lambda r: r.idle_requests_s, "{:.1f}"),
        ("after converging (--settle, --idle): reconciles/s", lambda r: r.idle_reconciles_s, "{:.1f}"),
        ("peak RSS (MB)", lambda r: r.rss_peak / 2**20, "{:.0f}"),
    ]
    print(f"\n{n} objects at once; ours = chronoshard operator (ShardSet → StatefulSet + status), "
          "floor = trivial Kopf operator (object → ConfigMap + status), same control plane, same run\n")
    print("| measure | chronoshard | trivial Kopf | ratio |\n|---|---|---|---|")
    top = 1000 * max(RECONCILE_SECONDS._upper_bounds[:-1])  # the histogram's last finite bucket, in ms

    def show(value: float, fmt: str) -> str:
        return f"> {top:.0f}" if value == float("inf") else fmt.format(value)

    for label, get, fmt in rows:
        a = get(ours) if ours else float("nan")
        b = get(floor) if floor else float("nan")
        print(f"| {label} | {show(a, fmt)} | {show(b, fmt)} | {ratio(a, b) if float('inf') not in (a, b) else '-'} |")
    for r in (ours, floor):
        if r is None:
            continue
        print(f"\n{r.label}: requests while converging by agent and verb: "
              + ", ".join(f"{k} {v}" for k, v in r.breakdown.most_common(12)))
        print(f"{r.label}: CPU seconds while converging: "
              + ", ".join(f"{k} {v:.1f}" for k, v in r.cpu.items()))
        if r.own_client_requests == r.own_client_requests and r is ours:
            print(f"{r.label}: its own client's counter (chronoshard_operator_api_requests_total): "
                  f"{r.own_client_requests:.0f}")
        if r.profile:
            total = sum(c for _, c in r.profile)
            print(f"\n{r.label}: top frames by own samples (py-spy, {total} samples in the top {len(r.profile)}):")
            for frame, count in r.profile:
                print(f"  {count:7d}  {frame}")


# ---- main ---------------------------------------------------------------------------------------------


def bench_client(kubeconfig: Path, pool: int) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = pool + 4  # the creators and the watches each hold a connection
    api = client.ApiClient(cfg)
    api.user_agent = BENCH_AGENT
    return api


@dataclass
class Cleanup:
    """Stops what the run started, on any exit; SIGTERM and SIGHUP are turned into KeyboardInterrupt."""

    cp: ControlPlane | None = None
    state: Path | None = None
    keep: bool = False

    def __enter__(self) -> Cleanup:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._interrupt)
        return self

    @staticmethod
    def _interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc: object) -> None:
        if self.cp is not None:
            say("stopping the control plane")
            self.cp.stop()
            if not self.keep:
                self.cp.wipe()
        if self.keep and self.state is not None:
            say(f"--keep: state (logs, audit log, profiles) left in {self.state}")
        elif self.state is not None:
            shutil.rmtree(self.state, ignore_errors=True)


def phases(args: argparse.Namespace) -> Iterator[str]:
    yield "ours"
    if not args.no_floor:
        yield "floor"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shardsets", type=int, default=1000, help="objects per operator (default 1000)")
    ap.add_argument("--shards", type=int, default=1, help="spec.shards of each ShardSet (its Pending pods)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent creating clients (default 16)")
    ap.add_argument("--settle", type=float, default=0.0, help="seconds to wait after converging before --idle")
    ap.add_argument("--idle", type=float, default=30.0,
                    help="seconds to count requests and passes after converging (and --settle)")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up converging after this many seconds")
    ap.add_argument("--profile", metavar="PREFIX", default=None, help="py-spy our operator to PREFIX-ours.txt")
    ap.add_argument("--no-floor", action="store_true", help="measure ours only")
    ap.add_argument("--keep", action="store_true", help="keep the state dir (logs, audit log) afterwards")
    args = ap.parse_args()
    if args.shardsets < 1 or args.clients < 1:
        ap.error("--shardsets and --clients must be >= 1")

    with Cleanup(keep=args.keep) as cleanup:
        state = cleanup.state = Path(tempfile.mkdtemp(prefix="chronoshard-scalebench-"))
        say(f"starting the control plane in {state}")
        cp = cleanup.cp = ControlPlane(state_dir=state / "cp", controller_manager=True, audit_policy=AUDIT_POLICY,
                                       service_cluster_ip_range=SERVICE_RANGE)
        cp.start()
        cp.install_crds(REPO / "crds")
        cp.kubectl("apply", "-f", "-", input=json.dumps(floor_operator.CRD))
        cp.kubectl("wait", "--for=condition=Established", f"crd/{floor_operator.PLURAL}.{floor_operator.GROUP}")
        for ns in (OURS_NS, FLOOR_NS, WARM_NS):
            cp.kubectl("create", "namespace", ns)
        api = bench_client(cp.kubeconfig, args.clients)
        run = Run(cp, api, args, state)
        port = free_port()
        results: dict[str, Result] = {}
        for phase in phases(args):
            subject = subjects(port)[phase]
            prof = Path(f"{args.profile}-{phase}.txt") if args.profile and phase == "ours" else None
            say(f"{subject.label}: starting the operator")
            results[phase] = measure(run, subject, port, prof)
        report(results, args.shardsets)


if __name__ == "__main__":
    main()

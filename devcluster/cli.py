"""``chronoshard-dev``: a local cluster without containers (control plane + operator + recovery console + process
node agent).

    chronoshard-dev up        start (or reuse) everything; prints how to use kubectl
    chronoshard-dev status    what runs, by PID
    chronoshard-dev kubeconfig [--export]
    chronoshard-dev logs POD [-c CONTAINER] [-n NAMESPACE] [--previous]
    chronoshard-dev kubectl ARGS...   the pinned kubectl, pointed at the local cluster
    chronoshard-dev down [--purge]    stop everything it started and check by PID that nothing is left

All state lives in ``--state-dir`` (default ``~/.cache/chronoshard/dev``): ``dev.json`` (PIDs and
their kernel start times), ``controlplane/`` (etcd data, certificates, kubeconfig), ``agent/`` (pods,
volumes, logs) and ``logs/``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .controlplane import ControlPlaneError, envtest_bin_dir, free_port, repo_root
from .keeper import write_json_atomic
from .kubeletpki import kubelet_client_pki
from .nodeagent.process import ProcessRecord, descendants, proc_start_time

DEFAULT_STATE = Path.home() / ".cache" / "chronoshard" / "dev"
NODE_NAME = "chronoshard-dev"
COMPONENTS = ("controlplane", "operator", "nodeagent", "console")
OPTIONAL = ("operator", "console")  # `up --no-operator` / `--no-console` leave these out
CONSOLE_NAMESPACE, CONSOLE_ACCOUNT = "chronoshard-system", "chronoshard-console"
# What the chart gives the console's ServiceAccount (charts/chronoshard/templates/console.yaml), applied by `up`:
# review tokens and rights, find the shard pods, read their shadows as itself, tokens of itself only.
CONSOLE_RBAC = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONSOLE_NAMESPACE}},
    {"apiVersion": "v1", "kind": "ServiceAccount",
     "metadata": {"name": CONSOLE_ACCOUNT, "namespace": CONSOLE_NAMESPACE}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": CONSOLE_ACCOUNT},
     "rules": [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
               {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
               {"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list"]},
               {"apiGroups": ["chronoshard.io"], "resources": ["shardsets/data"], "verbs": ["get", "list"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": CONSOLE_ACCOUNT},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CONSOLE_ACCOUNT},
     "subjects": [{"kind": "ServiceAccount", "name": CONSOLE_ACCOUNT, "namespace": CONSOLE_NAMESPACE}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
     "metadata": {"name": f"{CONSOLE_ACCOUNT}-token", "namespace": CONSOLE_NAMESPACE},
     "rules": [{"apiGroups": [""], "resources": ["serviceaccounts/token"], "resourceNames": [CONSOLE_ACCOUNT],
                "verbs": ["create"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
     "metadata": {"name": f"{CONSOLE_ACCOUNT}-token", "namespace": CONSOLE_NAMESPACE},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{CONSOLE_ACCOUNT}-token"},
     "subjects": [{"kind": "ServiceAccount", "name": CONSOLE_ACCOUNT, "namespace": CONSOLE_NAMESPACE}]},
]


class DevError(Exception):
    """A user-facing failure of a chronoshard-dev command."""


def _say(message: str) -> None:
    print(f"chronoshard-dev: {message}", file=sys.stderr, flush=True)


# ---- recorded processes -------------------------------------------------------------------------------


def _record(pid: int) -> dict[str, int]:
    return {"pid": pid, "start_time": proc_start_time(pid) or -1}


def _alive(entry: dict[str, int] | None) -> bool:
    return bool(entry) and proc_start_time(entry["pid"]) == entry["start_time"]  # type: ignore[index]


def _load_state(state: Path) -> dict[str, Any]:
    try:
        return json.loads((state / "dev.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"processes": {}}


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, int]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        # Own session: `up` returns and the process outlives it; `down` stops it by PID.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    return _record(proc.pid)


def _stop(entry: dict[str, int] | None, grace: float) -> None:
    """SIGTERM the recorded process, SIGKILL it (and its group) after ``grace`` seconds."""
    if not _alive(entry):
        return
    assert entry is not None
    os.kill(entry["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(entry):
        time.sleep(0.1)
    # Each component leads its own process group (own session): whatever it forked and left behind goes too.
    try:
        os.killpg(entry["pid"], signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def _locked(state: Path) -> Iterator[None]:
    state.mkdir(parents=True, exist_ok=True)
    with open(state / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _kubectl_argv(info: dict[str, Any]) -> list[str]:
    return [str(Path(info["bin_dir"]) / "kubectl"), f"--kubeconfig={info['kubeconfig']}"]


# ---- up --------------------------------------------------------------------------------------------------


def _start_controlplane(state: Path, bin_dir: Path, crds: Path | None, timeout: float) -> dict[str, Any]:
    info_file = state / "controlplane.json"
    info_file.unlink(missing_ok=True)
    pki = kubelet_client_pki(state / "pki")
    argv = [sys.executable, "-m", "chronoshard.devcluster.keeper", "--state-dir", str(state / "controlplane"),
            "--info", str(info_file), "--bin-dir", str(bin_dir),
            f"--apiserver-arg=--kubelet-client-certificate={pki['cert']}",
            f"--apiserver-arg=--kubelet-client-key={pki['key']}"]
    if crds is not None:
        argv += ["--crds", str(crds)]
    log = state / "logs" / "controlplane.log"
    keeper = _spawn(argv, log)
    _say(f"starting etcd, kube-apiserver, kube-controller-manager (log: {log})")
    deadline = time.monotonic() + timeout
    while not info_file.exists():
        if not _alive(keeper):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise DevError(f"the control plane failed to start; last lines of {log}:\n{tail}")
        if time.monotonic() > deadline:
            _stop(keeper, 10)
            raise DevError(f"the control plane was not ready within {timeout:.0f}s; see {log}")
        time.sleep(0.3)
    info = json.loads(info_file.read_text())
    info["keeper"] = keeper
    info["components"] = {name: _record(pid) for name, pid in info["pids"].items()}
    return info


def _wait_node_ready(info: dict[str, Any], agent: dict[str, int], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(agent):
            raise DevError(f"the node agent exited; see {log}")
        out = subprocess.run(
            [*_kubectl_argv(info), "get", "node", NODE_NAME, "-o",
             "jsonpath={.status.conditions[?(@.type=='Ready')].status}"],
            capture_output=True, text=True, check=False,
        )
        if out.stdout.strip() == "True":
            return
        time.sleep(0.5)
    raise DevError(f"node {NODE_NAME} not Ready within {timeout:.0f}s; see {log}")


def _ensure_operator(state: Path, procs: dict[str, Any], env: dict[str, str], venv_bin: Path,
                     fresh_cp: bool) -> None:
    """Start the operator unless it runs (restarted with a fresh control plane)."""
    if fresh_cp:
        _stop(procs.get("operator"), 10)
    if _alive(procs.get("operator")):
        return
    operator = shutil.which("chronoshard-operator", path=str(venv_bin)) or "chronoshard-operator"
    procs["operator"] = _spawn([operator, "--all-namespaces", "--verbose", "--metrics-host", "127.0.0.1",
                                "--metrics-port", str(free_port())], state / "logs" / "operator.log", env)
    _say(f"started the operator (log: {state / 'logs' / 'operator.log'})")


def _check_started(state: Path, procs: dict[str, Any], args: argparse.Namespace) -> None:
    """The operator (and the console) still run a moment after starting."""
    time.sleep(0.5)
    if not _alive(procs.get("operator")):
        raise DevError(f"the operator exited; see {state / 'logs' / 'operator.log'}")
    if args.console and not _alive(procs.get("console")):
        raise DevError(f"the console exited (is port {args.console_port} taken? --console-port); see "
                       f"{state / 'logs' / 'console.log'}")


def _ensure_console(state: Path, procs: dict[str, Any], info: dict[str, Any], env: dict[str, str], venv_bin: Path,
                    fresh_cp: bool, port: int) -> None:
    """Start the console unless it runs (restarted with a fresh control plane)."""
    if fresh_cp:
        _stop(procs.get("console"), 10)
    if not _alive(procs.get("console")):
        procs["console"] = _start_console(state, info, env, venv_bin, port)


def _start_console(state: Path, info: dict[str, Any], env: dict[str, str], venv_bin: Path,
                   port: int) -> dict[str, int]:
    """Apply the console's ServiceAccount and RBAC, then run ``chronoshard-console`` on loopback (plain HTTP:
    it never leaves this machine) with the cluster's admin kubeconfig as its own identity."""
    out = subprocess.run([*_kubectl_argv(info), "apply", "-f", "-"], input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": CONSOLE_RBAC}), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise DevError(f"could not apply the console's ServiceAccount and RBAC: {out.stderr.strip()}")
    console = shutil.which("chronoshard-console", path=str(venv_bin)) or "chronoshard-console"
    log = state / "logs" / "console.log"
    entry = _spawn([console, "--host", "127.0.0.1", "--port", str(port), "--insecure",
                    "--kubeconfig", info["kubeconfig"], "--service-account",
                    f"{CONSOLE_NAMESPACE}/{CONSOLE_ACCOUNT}"], log, env)
    _say(f"started the recovery console on http://127.0.0.1:{port}/ (log: {log})")
    return entry


def cmd_up(args: argparse.Namespace) -> int:
    """Start (or reuse) the control plane, the operator and the node agent."""
    state: Path = args.state_dir
    with _locked(state):
        data = _load_state(state)
        procs: dict[str, Any] = data.setdefault("processes", {})
        fresh_cp = False
        if not _alive(procs.get("controlplane")):
            # Leftovers of a keeper that died without stopping its children would hold etcd's data dir.
            for entry in (data.get("controlplane") or {}).get("components", {}).values():
                _stop(entry, 5)
            root = repo_root()
            crds = args.crds or (root / "crds" if root else None)
            if crds is None or not crds.is_dir():
                _say("no CRD directory found (pass --crds DIR); the chronoshard CRDs are not installed")
                crds = None
            try:
                bin_dir = envtest_bin_dir()  # builds on first use, progress on our stderr
            except ControlPlaneError as exc:
                raise DevError(str(exc)) from None
            info = _start_controlplane(state, bin_dir, crds, args.timeout)
            procs["controlplane"] = info.pop("keeper")
            data["controlplane"] = info
            fresh_cp = True
        else:
            _say("control plane already running; reusing it")
        info = data["controlplane"]
        env = {**os.environ, "KUBECONFIG": info["kubeconfig"]}
        venv_bin = Path(sys.executable).parent

        if args.operator:
            _ensure_operator(state, procs, env, venv_bin, fresh_cp)
        if fresh_cp:
            _stop(procs.get("nodeagent"), 10)
        agent_log = state / "logs" / "nodeagent.log"
        if not _alive(procs.get("nodeagent")):
            procs["nodeagent"] = _spawn(
                [sys.executable, "-m", "chronoshard.devcluster.nodeagent", "--kubeconfig", info["kubeconfig"],
                 "--state-dir", str(state / "agent"), "--node-name", NODE_NAME,
                 "--backoff-base", str(args.backoff_base), "--pod-cidr", args.pod_cidr,
                 "--client-ca", str(kubelet_client_pki(state / "pki")["ca"])],
                agent_log, env,
            )
            _say(f"started the node agent (log: {agent_log})")
        if args.operator and args.console:
            _ensure_console(state, procs, info, env, venv_bin, fresh_cp, args.console_port)
        write_json_atomic(state / "dev.json", data)
        _wait_node_ready(info, procs["nodeagent"], args.timeout, agent_log)
        if args.operator:
            _check_started(state, procs, args)
    kubectl = Path(info["bin_dir"]) / "kubectl"
    if args.operator and args.console:
        print(f"recovery console: http://127.0.0.1:{args.console_port}/ (sign in with a token, e.g. "
              f"`kubectl create token NAME -n NAMESPACE` of a ServiceAccount with rights on your ShardSets)")
    print(
        f"local cluster is up (API server {info['server']}, node {NODE_NAME}).\n"
        f"  export KUBECONFIG={info['kubeconfig']}\n"
        f"  export PATH={kubectl.parent}:$PATH      # the pinned kubectl\n"
        f"  kubectl apply -f crds/samples/shardset.yaml && kubectl get pods -o wide\n"
        f"  kubectl logs POD -c CONTAINER           # container logs (or: chronoshard-dev logs POD -c CONTAINER)\n"
        f"  chronoshard-dev down                    # stop everything"
    )
    return 0


# ---- down ------------------------------------------------------------------------------------------------


def _container_records(state: Path) -> list[ProcessRecord]:
    records = []
    for rec_file in (state / "agent" / "pods").glob("*/containers/*.json"):
        if not rec_file.name.endswith(".last.json"):
            rec = ProcessRecord.load(rec_file)
            if rec is not None:
                records.append(rec)
    return records


def all_pids(state: Path) -> dict[int, int]:
    """{pid: start time} of every live process this state dir started: components, containers, descendants."""
    data = _load_state(state)
    entries = [e for e in data.get("processes", {}).values() if e]
    entries += list((data.get("controlplane") or {}).get("components", {}).values())
    entries += [{"pid": r.pid, "start_time": r.start_time} for r in _container_records(state)]
    out: dict[int, int] = {}
    for entry in entries:
        if _alive(entry):
            out[entry["pid"]] = entry["start_time"]
            for child in descendants(entry["pid"]):
                start = proc_start_time(child)
                if start is not None:
                    out[child] = start
    return out


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the agent, the containers, the operator and the control plane; verify by PID."""
    state: Path = args.state_dir
    with _locked(state):
        data = _load_state(state)
        procs = data.get("processes", {})
        before = all_pids(state)
        _stop(procs.get("nodeagent"), 10)
        records = [r for r in _container_records(state) if r.alive()]
        for rec in records:
            rec.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(r.alive() for r in records):
            time.sleep(0.1)
        for rec in records:
            rec.kill_group()
        _stop(procs.get("console"), 10)
        _stop(procs.get("operator"), 10)
        _stop(procs.get("controlplane"), 30)
        for entry in (data.get("controlplane") or {}).get("components", {}).values():
            _stop(entry, 5)
        deadline = time.monotonic() + 10
        left = before
        while left and time.monotonic() < deadline:
            left = {pid: st for pid, st in before.items() if proc_start_time(pid) == st}
            if left:
                time.sleep(0.1)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
        left = {pid: st for pid, st in before.items() if proc_start_time(pid) == st}
        (state / "dev.json").unlink(missing_ok=True)
        (state / "controlplane.json").unlink(missing_ok=True)
    if left:
        _say(f"processes still running after down: {sorted(left)}")
        return 1
    _say(f"stopped {len(before)} processes; none left running")
    if args.purge:
        shutil.rmtree(state, ignore_errors=True)
        _say(f"removed {state}")
    return 0


# ---- status, kubeconfig, logs, kubectl ---------------------------------------------------------------


def _require_up(state: Path) -> dict[str, Any]:
    data = _load_state(state)
    if not _alive(data.get("processes", {}).get("controlplane")):
        raise DevError(f"no local cluster is running for {state}; run `chronoshard-dev up`")
    return data


def cmd_status(args: argparse.Namespace) -> int:
    """Print each component with its PID and whether it runs; exit 1 unless all run."""
    data = _load_state(args.state_dir)
    rows = [(name, data.get("processes", {}).get(name)) for name in COMPONENTS]
    rows += list((data.get("controlplane") or {}).get("components", {}).items())
    ok = True
    for name, entry in rows:
        running = _alive(entry)
        ok &= running or (name in OPTIONAL and entry is None)
        pid = entry["pid"] if entry else "-"
        print(f"{name:26} {'running' if running else 'stopped':8} pid {pid}")
    containers = [r for r in _container_records(args.state_dir) if r.alive()]
    print(f"{'containers':26} {len(containers)} running")
    if data.get("controlplane"):
        print(f"kubeconfig: {data['controlplane']['kubeconfig']}")
    return 0 if ok and data.get("controlplane") else 1


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    """Print the kubeconfig path (or an ``export KUBECONFIG=...`` line)."""
    path = _require_up(args.state_dir)["controlplane"]["kubeconfig"]
    print(f"export KUBECONFIG={path}" if args.export else path)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a container's log from the node agent's state (the current run, or ``--previous``)."""
    data = _require_up(args.state_dir)
    out = subprocess.run(
        [*_kubectl_argv(data["controlplane"]), "get", "pod", args.pod, "-n", args.namespace, "-o", "json"],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise DevError(out.stderr.strip())
    pod = json.loads(out.stdout)
    names = [c["name"] for c in pod["spec"]["containers"]]
    container = args.container or (names[0] if len(names) == 1 else None)
    if container is None:
        raise DevError(f"pod {args.pod} has several containers; choose one with -c: {' '.join(names)}")
    if container not in names:
        raise DevError(f"container {container} is not valid for pod {args.pod}: {' '.join(names)}")
    statuses = {s["name"]: s for s in (pod.get("status") or {}).get("containerStatuses") or []}
    restart = statuses.get(container, {}).get("restartCount", 0)
    run = restart - 1 if args.previous else restart
    log = args.state_dir / "agent" / "pods" / pod["metadata"]["uid"] / "logs" / container / f"{run}.log"
    if run < 0 or not log.exists():
        raise DevError(f"no {'previous ' if args.previous else ''}log for {args.pod}/{container}")
    sys.stdout.write(log.read_text(errors="replace"))
    return 0


def cmd_kubectl(args: argparse.Namespace) -> int:
    """Run the pinned kubectl against the local cluster."""
    data = _require_up(args.state_dir)
    return subprocess.run([*_kubectl_argv(data["controlplane"]), *args.args], check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="chronoshard-dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("CHRONOSHARD_DEV_STATE", DEFAULT_STATE)))
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or reuse) the local cluster")
    up.add_argument("--no-operator", dest="operator", action="store_false", help="do not start the operator")
    up.add_argument("--no-console", dest="console", action="store_false",
                    help="do not start the recovery console (it starts with the operator)")
    up.add_argument("--console-port", type=int, default=7410, help="the console's port on 127.0.0.1")
    up.add_argument("--crds", type=Path, default=None, help="CRD directory (default: the checkout's crds/)")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each component")
    up.add_argument("--backoff-base", type=float, default=10.0, help="first crash-loop back-off of containers")
    up.add_argument("--pod-cidr", default="auto",
                    help="pod IP range; auto = a free 127.x.0.0/16 (127.0.0.2, ... for the first cluster); "
                         "a range assigned to lo also fills Endpoints")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop everything and verify nothing is left")
    down.add_argument("--purge", action="store_true", help="also delete the state directory")
    down.set_defaults(func=cmd_down)
    sub.add_parser("status", help="show components and PIDs").set_defaults(func=cmd_status)
    kc = sub.add_parser("kubeconfig", help="print the kubeconfig path")
    kc.add_argument("--export", action="store_true", help="print an `export KUBECONFIG=...` line")
    kc.set_defaults(func=cmd_kubeconfig)
    logs = sub.add_parser("logs", help="print a container's log")
    logs.add_argument("pod")
    logs.add_argument("-c", "--container", default=None)
    logs.add_argument("-n", "--namespace", default="default")
    logs.add_argument("-p", "--previous", action="store_true", help="the log of the previous run")
    logs.set_defaults(func=cmd_logs)
    kubectl = sub.add_parser("kubectl", help="run the pinned kubectl against the local cluster")
    kubectl.add_argument("args", nargs=argparse.REMAINDER)
    kubectl.set_defaults(func=cmd_kubectl)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``chronoshard-dev`` console script."""
    args = build_parser().parse_args(argv)
    args.state_dir = args.state_dir.expanduser().resolve()
    try:
        return int(args.func(args))
    except DevError as exc:
        _say(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m chronoshard.devcluster.keeper``: own a ControlPlane in a detached process until SIGTERM.

``ControlPlane`` ties etcd, kube-apiserver and kube-controller-manager to the Python process that
started them; ``chronoshard-dev up`` must return while they keep running, so it starts this small
keeper in its own session. The keeper writes ``--info`` (kubeconfig, server, bin dir, component
PIDs) once the API server is ready and the CRDs are Established, and stops everything on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .controlplane import ControlPlane


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to ``path`` via a rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _stop_in_order(cp: ControlPlane, grace: float = 10.0) -> None:
    """SIGTERM clients before servers, one at a time: an API server whose etcd is already gone spends its
    whole grace period retrying, which made every ``down`` take 10 s longer."""
    for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
        pid = cp.pids().get(name)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and name in cp.pids():
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    """Start the control plane, publish its coordinates, wait for SIGTERM, stop it."""
    parser = argparse.ArgumentParser(prog="chronoshard-dev-keeper")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--info", required=True, type=Path)
    parser.add_argument("--bin-dir", type=Path, default=None)
    parser.add_argument("--crds", type=Path, default=None)
    parser.add_argument("--apiserver-arg", action="append", default=[], help="extra kube-apiserver flag (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s keeper: %(message)s")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda _s, _f: stop.set())

    args.info.unlink(missing_ok=True)
    cp = ControlPlane(
        state_dir=args.state_dir, controller_manager=True, bin_dir=args.bin_dir,
        extra_apiserver_args=tuple(args.apiserver_arg),
    )
    try:
        cp.start()
        crds = cp.install_crds(args.crds) if args.crds and args.crds.is_dir() else []
        write_json_atomic(
            args.info,
            {
                "kubeconfig": str(cp.kubeconfig),
                "server": cp.server,
                "bin_dir": str(cp.bin_dir),
                "pids": cp.pids(),
                "crds": crds,
            },
        )
        logging.info("control plane ready at %s (pids %s)", cp.server, cp.pids())
        reported: set[str] = set()
        while not stop.wait(2.0):
            # A component that died is reported once; chronoshard-dev status shows it too.
            for name in {"etcd", "kube-apiserver", "kube-controller-manager"} - set(cp.pids()) - reported:
                logging.error("%s stopped; see its log in %s", name, args.state_dir)
                reported.add(name)
    except BaseException:
        logging.exception("control plane failed")
        cp.stop()
        return 1
    logging.info("stopping control plane")
    _stop_in_order(cp)
    cp.stop()
    args.info.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start, find and stop container processes (each one a shim in its own session), by PID + start time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None if gone or zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after it are plain.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def parent_pid(pid: int) -> int | None:
    """The process's parent PID, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def descendants(pid: int) -> set[int]:
    """All live descendants of ``pid`` (scan of /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = parent_pid(int(entry.name))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in out:
                out.add(child)
                stack.append(child)
    return out


@dataclass(frozen=True)
class ProcessRecord:
    """What identifies a started process across agent restarts: PID plus its kernel start time."""

    pid: int
    start_time: int
    started_at: str
    exit_file: str
    log_file: str
    restart_count: int

    def alive(self) -> bool:
        """True while the very process we started runs (a reused PID has another start time)."""
        return proc_start_time(self.pid) == self.start_time

    def exit_info(self) -> dict[str, object] | None:
        """The shim's exit record, None if it has not written one."""
        try:
            return json.loads(Path(self.exit_file).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the shim (it forwards TERM/INT/HUP/QUIT to the container)."""
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        """SIGKILL the whole process group (shim, container, anything the container forked)."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def save(self, path: Path) -> None:
        """Persist the record atomically."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        """Read a saved record, None if missing or unreadable."""
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None


def launch(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    log_file: Path,
    exit_file: Path,
    restart_count: int,
    started_at: str,
) -> tuple[ProcessRecord, subprocess.Popen[bytes]]:
    """Start ``argv`` under a shim in a new session, stdout+stderr appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    exit_file.parent.mkdir(parents=True, exist_ok=True)
    exit_file.unlink(missing_ok=True)
    shim = [sys.executable, "-m", "chronoshard.devcluster.nodeagent.shim", str(exit_file), cwd, "--", *argv]
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            shim, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    start = proc_start_time(proc.pid)
    record = ProcessRecord(
        pid=proc.pid,
        start_time=start if start is not None else -1,
        started_at=started_at,
        exit_file=str(exit_file),
        log_file=str(log_file),
        restart_count=restart_count,
    )
    return record, proc

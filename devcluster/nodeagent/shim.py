"""Container shim: runs one container process, forwards signals to it, records its exit code in a file.

The agent starts one shim per container run (like conmon), in a new session so the shim and the
container share a process group. Because the exit code lands in a file, an agent that restarts can
still report how a container it did not start ended.
Usage: python -m chronoshard.devcluster.nodeagent.shim EXIT_FILE CWD -- ARGV...
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def _write(exit_file: Path, record: dict[str, object]) -> None:
    tmp = exit_file.with_name(exit_file.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, exit_file)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str] | None = None) -> int:
    """Run the container command and return its exit code (128+N when killed by signal N)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 4 or args[2] != "--":
        print("usage: shim EXIT_FILE CWD -- ARGV...", file=sys.stderr)
        return 2
    exit_file, cwd, command = Path(args[0]), args[1], args[3:]
    try:
        child = subprocess.Popen(command, cwd=cwd or None)
    except OSError as exc:
        # kubelet reports a command that cannot start as StartError with exit code 128.
        print(f"chronoshard-dev: cannot start {command[0]!r}: {exc.strerror}", file=sys.stderr)
        _write(exit_file, {"exitCode": 128, "reason": "StartError", "message": str(exc), "finishedAt": _now()})
        return 128

    def forward(signum: int, _frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)
    code = child.wait()
    record: dict[str, object] = {"finishedAt": _now()}
    exit_code = 128 - code if code < 0 else code
    if code < 0:
        record.update(exitCode=exit_code, signal=-code, reason="Error")
    else:
        record.update(exitCode=exit_code, reason="Completed" if code == 0 else "Error")
    _write(exit_file, record)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

"""hack/tools.sh gives the pinned versions of the chart tools (a stale or foreign cache would not)."""

from __future__ import annotations

import re
import subprocess

from .helpers import REPO, tools_bin


def _pins() -> dict[str, str]:
    text = (REPO / "hack" / "tools.sh").read_text()
    return {name: version for name, _, version in re.findall(r'"([\w-]+)\|([^|]+)\|(v[^"]+)"', text)}


def test_every_tool_reports_its_pinned_version() -> None:
    pins = _pins()
    assert set(pins) == {"helm", "kubeconform", "kube-score"}
    commands = {"helm": ["version", "--short"], "kubeconform": ["-v"], "kube-score": ["version"]}
    for name, args in commands.items():
        out = subprocess.run([str(tools_bin() / name), *args], capture_output=True, text=True, timeout=30, check=True)
        assert pins[name] in out.stdout, f"{name}: {out.stdout!r} is not the pinned {pins[name]}"

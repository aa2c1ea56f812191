"""Watch a mounted JSON settings file (node.json / cache.json) and re-apply it when it changes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class SettingsWatcher:
    """Re-reads the file when its resolved target changes; a file that does not parse keeps the old settings."""

    def __init__(self, path: str | os.PathLike[str] | None, apply: Callable[[dict[str, Any]], None],
                 on_result: Callable[[str | None], None] | None = None) -> None:
        self.path = Path(path) if path else None
        self._apply = apply
        self._on_result = on_result
        self._fingerprint: tuple[Any, ...] | None = None
        self.error: str | None = None

    @staticmethod
    def _stat(path: Path) -> tuple[Any, ...]:
        try:
            st = os.stat(path)  # follows the ..data symlink chain
        except OSError:
            return ("missing",)
        return (os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size)

    def poll(self) -> bool:
        """Apply the file if it changed; True if new settings were applied."""
        if self.path is None:
            return False
        fp = self._stat(self.path)
        if fp == self._fingerprint:
            return False
        self._fingerprint = fp
        try:
            doc = json.loads(self.path.read_text())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            self.error = f"{self.path.name}: {exc}"
            log.error("settings file %s not usable, keeping previous settings: %s", self.path, exc)
            if self._on_result:
                self._on_result(self.error)
            return False
        self._apply(doc)
        self.error = None
        if self._on_result:
            self._on_result(None)
        return True

    async def run(self, interval: float) -> None:
        """Poll until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.poll)
            except Exception:
                log.exception("settings watcher failed")
            await asyncio.sleep(interval)

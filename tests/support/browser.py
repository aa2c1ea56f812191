"""Debian's Chromium driven by Playwright for the console's browser tests (never Playwright's own browser download).

``hack/test.sh`` exports ``CHRONOSHARD_CHROMIUM`` (printed by ``hack/chromium.sh``, which installs the Debian
package when it is missing); run alone, a test falls back to ``/usr/bin/chromium``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "build" / "console-screenshots"
VIEWPORT = {"width": 1366, "height": 768}  # a laptop screen: the console must be usable at this size

# Without the background-networking flags Chromium keeps dialling Google's hosts, which this closed network
# refuses (many connections at once); no sandbox because the tests run as root in a container.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """The Chromium binary to drive; an AssertionError says how to get one."""
    path = os.environ.get("CHRONOSHARD_CHROMIUM") or "/usr/bin/chromium"
    assert os.access(path, os.X_OK), f"no Chromium at {path}: run hack/chromium.sh (installs Debian's chromium)"
    return path


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium under Playwright. Each launch runs on a new, empty profile directory
    (Playwright creates a fresh temporary --user-data-dir per launch and removes it on close)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> Path:
    """Save the page as ``build/console-screenshots/NAME.png`` (the test's artifact) and return the path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@contextmanager
def screenshots_on_failure(browser: Any) -> Iterator[None]:
    """On an exception, save every open page as ``failure-N.png`` (what the browser showed when the test failed)."""
    try:
        yield
    except BaseException:
        pages = [p for c in browser.contexts for p in c.pages]
        for i, page in enumerate(pages):
            try:
                screenshot(page, f"failure-{i}")
            except Exception:  # a crashed page: the other screenshots and the test's own error still count
                pass
        raise

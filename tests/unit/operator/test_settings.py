"""The operator's test seam for policy poll periods: production periods unless $CHRONOSHARD_TEST_POLL_SECONDS
names a shorter one."""

from __future__ import annotations

import pytest
from chronoshard.operator.settings import TEST_POLL_ENV, poll_seconds


def test_without_the_variable_the_production_period_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEST_POLL_ENV, raising=False)
    assert poll_seconds(10.0) == 10.0


def test_the_variable_shortens_a_period_but_never_lengthens_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_POLL_ENV, "1")
    assert poll_seconds(10.0) == 1.0
    assert poll_seconds(0.5) == 0.5


def test_an_unreadable_value_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_POLL_ENV, "soon")
    assert poll_seconds(10.0) == 10.0

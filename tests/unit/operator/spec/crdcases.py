"""Loads the CRDs, their samples and the invalid cases; shared by the unit and integration tests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[4]
CRDS_DIR = REPO / "crds"
SAMPLES_DIR = CRDS_DIR / "samples"
INVALID_DIR = REPO / "tests" / "data" / "invalid"
GROUP = "chronoshard.io"
VERSION = "v1alpha1"
KINDS = ("ShardSet", "KeyRotation", "PrefetchPolicy", "ShadowPolicy", "MirrorSet", "WeavePlan")


@dataclass(frozen=True)
class InvalidCase:
    """An object the API server must refuse; `field` must appear in its error message."""

    path: Path
    obj: dict[str, Any]
    field: str
    why: str
    status: int  # 422 for schema/CEL errors, 400 for unknown fields under strict field validation

    @property
    def id(self) -> str:
        return self.path.stem


def load_crds() -> dict[str, dict[str, Any]]:
    """kind → CRD document, from crds/*.yaml."""
    crds = {}
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        crds[doc["spec"]["names"]["kind"]] = doc
    return crds


def plural(kind: str) -> str:
    """The resource name of a kind."""
    return load_crds()[kind]["spec"]["names"]["plural"]


def load_samples() -> list[tuple[Path, dict[str, Any]]]:
    """(path, object) for every sample."""
    return [(p, yaml.safe_load(p.read_text())) for p in sorted(SAMPLES_DIR.glob("*.yaml"))]


def load_invalid_cases() -> list[InvalidCase]:
    """Every invalid case; its header comments (`# field: ...`, `# why: ...`, `# status: ...`) annotate it."""
    cases = []
    for path in sorted(INVALID_DIR.glob("*.yaml")):
        text = path.read_text()
        header = dict(re.findall(r"^# (\w+): (.*)$", text, re.M))
        cases.append(InvalidCase(path=path, obj=yaml.safe_load(text), field=header["field"],
                                 why=header.get("why", ""), status=int(header.get("status", 422))))
    return cases


def sample(kind: str) -> dict[str, Any]:
    """The sample object of a kind."""
    return next(obj for _, obj in load_samples() if obj["kind"] == kind)


def invalid_cases(kind: str) -> list[InvalidCase]:
    """The invalid cases of a kind."""
    return [c for c in load_invalid_cases() if c.obj["kind"] == kind]

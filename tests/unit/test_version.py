"""One release version, in the VERSION file: every file that must hold it as a literal agrees, and so does the code."""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

import yaml
from chronoshard.operator import naming
from chronoshard.operator.spec.shardset import DEFAULT_IMAGE

REPO = Path(__file__).resolve().parents[2]
VERSION = (REPO / "VERSION").read_text().strip()
IMAGE = "ghcr.io/chronoshard/chronoshard"
# An image reference with a release tag, anywhere in a text file (the chart templates build theirs from appVersion).
IMAGE_TAG = re.compile(re.escape(IMAGE) + r":(\d[\w.+-]*)")


def test_version_file_is_one_release_number() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION


def test_installed_metadata_and_the_code_read_the_version_file() -> None:
    # A stale editable install (VERSION changed since) fails here: reinstall with hack/test.sh.
    assert metadata.version("chronoshard") == VERSION
    assert naming.APP_VERSION == VERSION
    assert naming.common_labels("s", "shard")["app.kubernetes.io/version"] == VERSION
    assert DEFAULT_IMAGE == f"{IMAGE}:{VERSION}"


def test_chart_version_and_app_version_are_the_release() -> None:
    chart = yaml.safe_load((REPO / "charts/chronoshard/Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (VERSION, VERSION)


def test_dockerfile_version_label_defaults_to_the_release() -> None:
    args = re.findall(r"^ARG VERSION=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert args == [VERSION]


def test_crd_default_image_is_the_release() -> None:
    for path in (REPO / "crds/shardsets.yaml", REPO / "charts/chronoshard/crds/shardsets.yaml"):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        assert spec["properties"]["image"]["default"] == f"{IMAGE}:{VERSION}", path


def test_every_tagged_image_reference_in_the_repository_is_the_release() -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    stale = []
    for name in tracked.decode().split("\0"):
        path = REPO / name
        if not name or not path.is_file() or name.endswith(".lock"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        stale += [f"{name}: {IMAGE}:{tag}" for tag in IMAGE_TAG.findall(text) if tag != VERSION]
    assert not stale, f"VERSION is {VERSION}; update: {stale}"

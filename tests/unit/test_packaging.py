"""Packaging: every sub-package is listed in its pyproject, a plain (non-editable) install imports them all, and the
production wheel carries no local-cluster code."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAPPING = {"operator": "chronoshard.operator", "shardnode": "chronoshard.shardnode"}
# The local cluster is its own distribution (devcluster/pyproject.toml), never part of the chronoshard wheel.
DEVCLUSTER_MAPPING = {"devcluster": "chronoshard.devcluster"}


def discovered_packages(mapping: dict[str, str] = MAPPING) -> set[str]:
    found = set()
    for folder, dotted in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([dotted, *rel.parts]) if rel.parts else dotted)
    return found


def listed_packages(pyproject: Path) -> set[str]:
    return set(tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["packages"])


def test_every_package_is_listed_in_pyproject():
    assert discovered_packages() == listed_packages(REPO / "pyproject.toml")


def test_every_devcluster_package_is_listed_in_its_own_pyproject():
    assert discovered_packages(DEVCLUSTER_MAPPING) == listed_packages(REPO / "devcluster" / "pyproject.toml")


@pytest.fixture(scope="module")
def production_wheel(tmp_path_factory) -> Path:
    """The chronoshard wheel built from this checkout, as the image's builder stage builds it."""
    wheel_dir = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(wheel_dir), str(REPO)], check=True, cwd=wheel_dir)
    return next(wheel_dir.glob("chronoshard-*.whl"))


@pytest.mark.skipif(os.environ.get("CHRONOSHARD_SKIP_WHEEL_TEST") == "1", reason="explicitly disabled")
def test_production_wheel_carries_no_local_cluster(production_wheel):
    names = zipfile.ZipFile(production_wheel).namelist()
    assert any(n.startswith("chronoshard/operator/") for n in names)  # guards the check below
    assert not [n for n in names if n.startswith("chronoshard/devcluster/")]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "devcluster" not in zipfile.ZipFile(production_wheel).read(entry_points).decode()


def test_editable_install_imports_every_package():
    for name in sorted(discovered_packages()):
        __import__(name)
    import chronoshard.operator

    assert Path(chronoshard.operator.__file__).resolve().parent == REPO / "operator"


@pytest.mark.skipif(os.environ.get("CHRONOSHARD_SKIP_WHEEL_TEST") == "1", reason="explicitly disabled")
def test_plain_install_into_a_fresh_target_imports_every_package(tmp_path, production_wheel):
    # A wheel installed (without dependencies) into an empty target proves the mapping works outside the
    # source tree; dependencies come from this interpreter's site-packages via PYTHONPATH order.
    wheel = production_wheel
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, cwd=tmp_path)
    code = "import importlib, sys\n" + "".join(
        f"m = importlib.import_module({n!r}); assert m.__file__.startswith({str(target)!r}), m.__file__\n"
        for n in sorted(discovered_packages())
    )
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    # -I would drop PYTHONPATH; -s plus running from tmp_path keeps the checkout off sys.path.
    subprocess.run([sys.executable, "-s", "-c", code], check=True, cwd=tmp_path, env=env)

"""Packaging: every sub-package is listed in pyproject, and a plain (non-editable) install imports them all."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAPPING = {"operator": "chronoshard.operator", "shardnode": "chronoshard.shardnode"}


def discovered_packages() -> set[str]:
    found = set()
    for folder, dotted in MAPPING.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([dotted, *rel.parts]) if rel.parts else dotted)
    return found


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert discovered_packages() == listed


def test_editable_install_imports_every_package():
    for name in sorted(discovered_packages()):
        __import__(name)
    import chronoshard.operator

    assert Path(chronoshard.operator.__file__).resolve().parent == REPO / "operator"


@pytest.mark.skipif(os.environ.get("CHRONOSHARD_SKIP_WHEEL_TEST") == "1", reason="explicitly disabled")
def test_plain_install_into_a_fresh_target_imports_every_package(tmp_path):
    # A wheel installed (without dependencies) into an empty target proves the mapping works outside the
    # source tree; dependencies come from this interpreter's site-packages via PYTHONPATH order.
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(wheel_dir), str(REPO)], check=True, cwd=tmp_path)
    wheel = next(wheel_dir.glob("chronoshard-*.whl"))
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

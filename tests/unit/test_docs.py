"""The documentation stays true: paths it names exist, links stay inside the repository, and docs/architecture.md
names every HTTP route, console script and custom resource kind (so a newcomer can find each one's module)."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ARCHITECTURE = REPO / "docs" / "architecture.md"
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "charts").glob("**/*.md")])

# A backticked token that names a file or folder of this repository (placeholders such as <name> are not paths).
REPO_PATH = re.compile(
    r"(?:operator|shardnode|devcluster|tests|hack|crds|charts|docs)/[\w./-]*"
    r"|pyproject\.toml|Dockerfile|VERSION|requirements(?:-dev)?\.lock|README\.md|\.dockerignore"
)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)


def _ids(docs: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO)) for p in docs]


def repo_paths(text: str) -> set[str]:
    """Every repository path named in a code span outside fenced blocks (trailing punctuation dropped)."""
    names = set()
    for span in CODE_SPAN.findall(FENCE.sub("", text)):
        for token in span.split():
            token = token.rstrip(",;:.)")
            if REPO_PATH.fullmatch(token):
                names.add(token)
    return names


DOTTED = re.compile(r"\bchronoshard\.(?:operator|shardnode|devcluster)(?:\.[A-Za-z_]\w*)*")


def resolves(dotted: str) -> bool:
    """Whether ``a.b.c`` is a module, or a module's attribute path."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {anchor(h) for h in HEADING.findall(FENCE.sub("", path.read_text()))}


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_repository_path_a_doc_names_exists(doc) -> None:
    # A path is read from the repository root, or (as a chart's README does) from the doc's own folder.
    named = repo_paths(doc.read_text())
    missing = sorted(p for p in named if not (REPO / p).exists() and not (doc.parent / p).exists())
    assert not missing, f"{doc.relative_to(REPO)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_module_a_doc_names_imports(doc) -> None:
    stale = sorted(name for name in set(DOTTED.findall(doc.read_text())) if not resolves(name))
    assert not stale, f"{doc.relative_to(REPO)} names modules that do not exist: {stale}"


def test_module_check_sees_a_moved_module() -> None:
    assert resolves("chronoshard.shardnode.keys.provider.wrap_key")
    assert not resolves("chronoshard.shardnode.node_server")
    assert not resolves("chronoshard.operator.dev.cli")


def test_architecture_names_paths_at_all() -> None:
    # Guards the check above against a pattern that matches nothing.
    assert {"operator/podcontract.py", "shardnode/serving/scaffold.py", "pyproject.toml"} <= repo_paths(
        ARCHITECTURE.read_text()
    )


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_relative_link_stays_inside_the_repository_and_resolves(doc) -> None:
    problems = []
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, fragment = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.is_relative_to(REPO):
            problems.append(f"{target}: outside the repository")
        elif not path.exists():
            problems.append(f"{target}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            problems.append(f"{target}: no heading #{fragment}")
    assert not problems, f"{doc.relative_to(REPO)}: {problems}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_no_doc_points_at_the_shared_folder_outside_the_repository(doc) -> None:
    # A user who clones the repository has no ../shared; commands and links must not need it.
    assert "../shared" not in doc.read_text()


def test_link_check_sees_an_escaping_link(tmp_path) -> None:
    # Guards the link check: a link out of the repository resolves outside it.
    assert not (REPO / "docs" / "../../shared/DESIGN.md").resolve().is_relative_to(REPO)
    assert LINK.findall("see [DESIGN.md](../shared/DESIGN.md).") == ["../shared/DESIGN.md"]


NAMES_IN_PARENS = re.compile(r"\(((?:`[A-Za-z_]\w*`(?:, )?)+)\)")


def _defines(module: Path, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+def|def|class)\s+{name}\b|^{name}\s*[:=]", module.read_text(), re.M) is not None


def test_every_function_a_table_row_names_is_defined_in_that_rows_modules() -> None:
    # "| step | `operator/x/controller.py` (`_phase_fn`) |": the function, class or constant exists there.
    problems = []
    where = _section(ARCHITECTURE.read_text(), "## Where the code is")
    for row in (line for line in where.splitlines() if line.startswith("|")):
        modules = [REPO / p for p in repo_paths(row) if p.endswith(".py")]
        for group in NAMES_IN_PARENS.findall(row):
            for name in re.findall(r"`(\w+)`", group):
                if modules and not any(_defines(m, name) for m in modules):
                    problems.append(f"{name} not in {[str(m.relative_to(REPO)) for m in modules]}")
    assert not problems, problems


def _openapi_routes() -> set[tuple[str, str]]:
    routes = set()
    for doc in (REPO / "shardnode").glob("*/openapi.yaml"):
        for path, item in yaml.safe_load(doc.read_text())["paths"].items():
            routes.update((method.upper(), path) for method in item if method in {"get", "put", "post", "delete"})
    return routes


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    end = re.search(rf"^#{{1,{len(level)}}} ", text[start + len(heading):], re.M)
    return text[start: start + len(heading) + end.start()] if end else text[start:]


def test_architecture_names_every_http_route() -> None:
    text = _section(ARCHITECTURE.read_text(), "### HTTP routes")
    routes = _openapi_routes() | {("GET", "/v1/status"), ("GET", "/v1/partitions")}
    assert len(routes) > 20  # both OpenAPI documents were read
    missing = sorted(f"{method} {path}" for method, path in routes if f"{path}`" not in text)
    assert not missing, f"docs/architecture.md does not say which module handles: {missing}"


def test_architecture_names_every_console_script_and_kind() -> None:
    text = _section(ARCHITECTURE.read_text(), "## Where the code is")
    scripts = set()
    for pyproject in (REPO / "pyproject.toml", REPO / "devcluster" / "pyproject.toml"):
        scripts |= set(tomllib.loads(pyproject.read_text())["project"]["scripts"])
    kinds = {yaml.safe_load(crd.read_text())["spec"]["names"]["kind"] for crd in (REPO / "crds").glob("*.yaml")}
    assert len(kinds) == 8
    missing = sorted(name for name in scripts if f"`{name}`" not in text)
    missing += sorted(kind for kind in kinds if f"| {kind} |" not in text)
    assert not missing, f"docs/architecture.md's tables lack: {missing}"

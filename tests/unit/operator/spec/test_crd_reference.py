"""docs/crd-reference.md is generated from crds/ by hack/gen_crd_reference.py and must not be stale."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.support.crdcases import KINDS, REPO, maximal, spec_schema

SCRIPT = REPO / "hack" / "gen_crd_reference.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_crd_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _paths(value: object, prefix: str) -> set[str]:
    out: set[str] = set()
    if isinstance(value, dict):
        for key, sub in value.items():
            out.add(f"{prefix}.{key}")
            out |= _paths(sub, f"{prefix}.{key}")
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        out |= {p.replace(prefix, prefix + "[]", 1) for p in _paths(value[0], prefix)}
    return out


def test_document_is_up_to_date():
    gen = _generator()
    expected = gen.render(gen.load_crds())
    assert Path(gen.DOC).read_text() == expected, "run: python hack/gen_crd_reference.py"


def test_check_mode_reports_staleness(tmp_path, monkeypatch, capsys):
    gen = _generator()
    assert gen.main(["--check"]) == 0
    stale = tmp_path / "crd-reference.md"
    stale.write_text("old\n")
    monkeypatch.setattr(gen, "DOC", stale)
    assert gen.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err


def test_every_spec_field_has_a_row_with_type_default_and_description():
    gen = _generator()
    doc = gen.render(gen.load_crds())
    for kind in KINDS:
        assert f"## {kind}" in doc
        for path in _paths(maximal(spec_schema(kind)), "spec"):
            # ShardSet's podTemplate maps add a synthetic key `k`; tolerations are free-form objects.
            if path.endswith(".k") or ".tolerations[]" in path:
                continue
            assert f"| `{path}` |" in doc, (kind, path)
    assert '| `spec.transitionPeriod` | duration | `"24h"` |' in doc
    assert '| `spec.storage.size` | quantity | `"1Gi"` |' in doc


def test_script_runs_as_a_plain_script():
    import subprocess

    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr

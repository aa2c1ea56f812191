"""Shared HTTP helpers: validation rules and the packaged OpenAPI documents."""

import fnmatch
import tomllib
from pathlib import Path

import pytest
from chronoshard.shardnode.serving.http_common import KEY_RE, TABLE_RE, ApiError, check_key
from chronoshard.shardnode.serving.scaffold import load_openapi

REPO = Path(__file__).resolve().parents[4]


@pytest.mark.parametrize("name", ["node", "cache"])
def test_openapi_documents_load_and_ship_in_the_wheel(name):
    doc = load_openapi(name)
    assert doc["openapi"].startswith("3.") and doc["paths"]
    # The wheel only carries files matched by package-data; a document outside them would crash the image.
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        f"chronoshard.shardnode.{name}"]
    assert any(fnmatch.fnmatch("openapi.yaml", p) for p in patterns)
    assert (REPO / "shardnode" / name / "openapi.yaml").is_file()


def test_documented_patterns_match_the_server_rules():
    doc = load_openapi("node")
    params = doc["components"]["parameters"]
    assert params["table"]["schema"]["pattern"] == f"^{TABLE_RE.pattern}$"
    # the document spells the control range with \\u escapes (JSON Schema regex), Python with \\x
    assert params["key"]["schema"]["pattern"] == "^[^\\u0000-\\u001f\\u007f/]{1,1024}$"
    assert KEY_RE.pattern == "[^\\x00-\\x1f\\x7f/]{1,1024}"


@pytest.mark.parametrize("key", ["a", "ünï", "x" * 1024, "a b", "%2F"])
def test_valid_keys(key):
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "a/b", "x" * 1025, "tab\there", "\x7f", 5, None, "\ud800"])
def test_invalid_keys(key):
    with pytest.raises(ApiError) as exc:
        check_key(key)
    assert exc.value.status == 400 and exc.value.code == "invalid_key"

"""The work units hack/test.sh's xdist workers get (tests/support/scheduling.py)."""

from __future__ import annotations

from tests.support.scheduling import scope_of


def test_a_test_file_is_one_unit() -> None:
    assert scope_of("tests/unit/test_docs.py::test_a[x]") == "tests/unit/test_docs.py"
    charts = "tests/integration/charts/test_install.py"
    assert scope_of(charts + "::Cls::test_b") == charts


def test_every_e2e_test_is_in_one_unit() -> None:
    assert scope_of("tests/e2e/test_pods.py::test_a") == scope_of("tests/e2e/test_mirror.py::test_b") == "e2e"


def test_the_without_operator_group_is_one_unit_across_files() -> None:
    assert scope_of("tests/integration/client/test_cli_mirror.py::test_a@without_operator") == "without_operator"
    assert scope_of("tests/integration/operator/test_reversion.py::test_b[p]@without_operator") == "without_operator"


def test_an_at_sign_in_a_parameter_is_not_a_group() -> None:
    assert scope_of("tests/unit/test_x.py::test_a[user@host]") == "tests/unit/test_x.py"

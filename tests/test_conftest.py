"""The test suite's own rules: what is absent skips on a fresh clone but fails under CI=true."""

from __future__ import annotations

import pytest
from conftest import needs, needs_module, needs_shared


@pytest.mark.parametrize(
    "check",
    [
        lambda tmp_path: needs_shared(tmp_path / "shared"),
        lambda tmp_path: needs_module("a_weight_wheel_that_is_not_installed", "needs the wheel"),
        lambda tmp_path: needs(False, "needs Chromium"),
    ],
    ids=["shared-folder", "wheel", "browser"],
)
def test_a_missing_dependency_skips_locally_but_fails_under_ci(check, tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        check(tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as outcome:  # a skip must not escape as one
        check(tmp_path)
    assert outcome.type is pytest.fail.Exception and "CI=true" in str(outcome.value)


def test_what_is_present_neither_skips_nor_fails_under_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    needs_shared(tmp_path)
    needs_module("numpy", "needs numpy")

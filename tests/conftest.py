"""Shared fixtures. Every test gets its own build cache so results never depend on ~/.cache."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_build_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TVMSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "build-cache"))

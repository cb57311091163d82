"""Shared fixtures for the local backend, engine and tiny-model tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny model, built once per test session in a private cache folder."""
    from retrain.models.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("retrain-cache"))

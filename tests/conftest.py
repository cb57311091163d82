"""Session fixtures for tests that run ``retrain`` end to end: one cache folder with the
tiny model built. The run helpers (tests/run/cli_runs.py) are importable from every test
folder, since the reliability probes drive real runs too."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "run"))
from cli_runs import cli_environment, describe  # noqa: E402

# A suite started in the background inherits SIGINT ignored (`pytest &`), and under
# `nohup` SIGHUP ignored too, and so would every process it starts — retrain keeps an
# ignored stop signal ignored, by design — so the tests of Ctrl-C and SIGHUP would wait
# forever. Their default dispositions are restored for the suite and its children (so a
# suite under nohup is no longer shielded from a hangup).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture(scope="session")
def retrain_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder shared by every run of the session, with the tiny model built.

    The model is built in a subprocess with the runs' environment, so it is the model
    the runs load and the test process keeps its own thread settings.
    """
    cache = tmp_path_factory.mktemp("retrain-cache")
    build = subprocess.run(
        [sys.executable, "-c", "from retrain.models.tiny import ensure_tiny_model; print(ensure_tiny_model())"],
        env=cli_environment(cache), capture_output=True, text=True, timeout=600, check=False,
    )
    assert build.returncode == 0, describe(build)
    return cache


@pytest.fixture(scope="session")
def tiny_model_path(retrain_cache: Path) -> Path:
    from retrain.models.tiny import ensure_tiny_model

    return ensure_tiny_model(retrain_cache)

"""Fixtures shared by the engine and the service tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Starlette's TestClient sends "Host: testserver", which the production defaults refuse (TUNER_ALLOWED_HOSTS).
os.environ.setdefault("TUNER_ALLOWED_HOSTS", "localhost,127.0.0.1,::1,[::1],testserver")

EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin-resmlp"


@pytest.fixture(scope="session")
def resmlp_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example plugin pip-installed into a temporary ``--target`` folder put on ``sys.path`` (its
    ``.dist-info`` makes the entry point visible); removed again afterwards. Yields the plugin's name."""
    from tuner import registry

    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "plugin-resmlp"
    shutil.copytree(EXAMPLE_PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))  # builds leave files
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        check=True, capture_output=True,
    )
    assert list(target.glob("tuneserve_resmlp-*.dist-info"))
    sys.path.insert(0, str(target))
    registry.refresh()
    try:
        yield "resmlp"
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("tuneserve_resmlp", None)
        registry.refresh()

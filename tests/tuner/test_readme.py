"""The README's worked example is the example file users run (it had drifted once)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_worked_example_is_examples_digits_mlp() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("`examples/digits-mlp.json`:", 1)[1]
    block = re.search(r"```json\n(.*?)\n```", section, re.DOTALL)
    assert block is not None
    assert json.loads(block.group(1)) == json.loads((ROOT / "examples" / "digits-mlp.json").read_text())

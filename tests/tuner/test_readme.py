"""The README's worked example is the example file users run (it had drifted once), and its reproduce command is
the one the result bundle gives."""

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


def test_readme_reproduce_command_has_every_flag_the_bundle_gives(make_spec) -> None:
    """The README's reproduce example spells the same flags, in the same order, as tuner.provenance does."""
    import shlex

    from tuner.provenance import reproduction

    readme = (ROOT / "README.md").read_text()
    section = readme.split("**Reproducing a result elsewhere.**", 1)[1]
    shown = re.search(r'"command": "(tuner run [^"]+)"', section)
    assert shown is not None
    argv = reproduction(make_spec(), [], {}, study_name="job-x")["argv"]
    flags = [a for a in argv if a.startswith("--")]
    assert flags == ["--jobs", "--threads", "--device", "--storage", "--study-name"]
    assert [a for a in shlex.split(shown.group(1)) if a.startswith("--")] == flags
    assert shown.group(1).startswith("tuner run spec.json --jobs 1 --threads ")
    speed = readme.split("## Speed", 1)[1]
    words = " ".join(speed.split())
    assert "keeps: the trial count (exact) and the test set scored once" in words
    assert "Only `--jobs 1` repeats a search exactly" in words and "best trial and so the test score vary" in words

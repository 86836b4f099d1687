"""The scripts in examples/ run as a user runs them (from the repository root, with their arguments) and print
what their docstrings promise."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# script -> lines its output must contain (regular expressions)
EXPECTED = {
    "evaluate_scores.py": [
        r"^attribute: CZSL top-1 0\.\d+ \| GZSL S 0\.\d+ U 0\.\d+ H 0\.\d+ \(gamma -?\d+\.\d+ from validation",
        r"^multilabel ZSL: mAP 0\.\d+ \| F1@3 0\.\d+ F1@5 0\.\d+ \(300 images",
        r"^multilabel GZSL: mAP 0\.\d+",
        r"^compositional closed world: AUC 0\.\d+ best HM 0\.\d+",
        r"^compositional open world \(\d+ of 20 pairs kept\): AUC 0\.\d+",
    ],
    "create_model.py": [
        r"^mgmrn: scores \(2, 5\) \(images x classes\)$",
        r"^epsilon: scores \(2, 7\) \(images x labels\)$",
        r"^refiner: scores \(2, 4\) \(images x pairs\)",
    ],
    "load_run.py": [
        r"^trained: .*attn1-tiny \(.*config\.yaml.*results\.json",
        r"^model: attn1, \d+ parameters, seed 0$",
        r"^predict \S+: \S+ \(-?\d+\.\d+\), \S+ \(-?\d+\.\d+\)$",
        r"^eval: CZSL top-1 (0\.\d+) \(results\.json: \1\)$",  # the saved model reproduces the saved metrics
    ],
}


def test_every_example_is_checked():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path, monkeypatch, capsys):
    """Each script run as ``python examples/NAME`` from the repository root, in this process (the imports are
    already paid for: the suite stays under its time budget)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("UNSEEN_CACHE", str(tmp_path / "cache"))
    argv = [str(EXAMPLES / name)] + ([str(tmp_path / "work")] if name == "load_run.py" else [])
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    stdout = capsys.readouterr().out
    for pattern in EXPECTED[name]:
        assert re.search(pattern, stdout, re.MULTILINE), f"{name}: no line matches {pattern!r}\n{stdout}"

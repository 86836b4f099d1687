"""The scripts in examples/ run as a user runs them (a fresh process, from the repository root) and print what
their docstrings promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def started(request, tmp_path_factory) -> Iterator[dict[str, subprocess.Popen]]:
    """The selected examples started at once: each is mostly single-threaded imports, so they overlap on a
    multi-core machine."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    }
    procs = {}
    for name in sorted(selected):
        tmp = tmp_path_factory.mktemp(name.removesuffix(".py"))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true", "UNSEEN_CACHE": str(tmp / "cache")}
        args = [sys.executable, str(EXAMPLES / name)]
        if name == "load_run.py":
            args.append(str(tmp / "work"))  # keep the run inside the test's folder
        procs[name] = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, started: dict[str, subprocess.Popen]):
    stdout, stderr = started[name].communicate(timeout=600)
    rc = started[name].returncode
    assert rc == 0, f"{name} exited {rc}\n{stdout}\n{stderr}"
    for pattern in EXPECTED[name]:
        assert re.search(pattern, stdout, re.MULTILINE), f"{name}: no line matches {pattern!r}\n{stdout}"

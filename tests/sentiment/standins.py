"""Tiny stand-ins of pysentimiento's models (bench/standins.py at 2 layers), built and exported once
per test session: every test of a (task, lang) reads the same dirs."""

import subprocess
import sys
from pathlib import Path

import pytest

from bench.standins import build_standin
from tests.support import ROOT


class Standins:
    def __init__(self, root: Path) -> None:
        self.root = root

    def source(self, task: str, lang: str) -> Path:
        """The transformers dir (random weights, pysentimiento's labels)."""
        out = self.root / f"{task}-{lang}-hf"
        if not (out / "config.json").is_file():
            build_standin(task, lang, out, tiny=True)
        return out

    def exported(self, task: str, lang: str, recipe: str | None = None) -> Path:
        """`python -m service.export` of it: fp32 (`recipe` None) or an INT8 recipe."""
        out = self.root / f"{task}-{lang}-{recipe or 'fp32'}"
        if not (out / "manifest.json").is_file():
            command = [sys.executable, "-m", "service.export", "--task", task, "--lang", lang]
            command += ["--source", str(self.source(task, lang)), "--out", str(out)]
            command += ["--recipe", recipe] if recipe else ["--no-quantize"]
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            if result.returncode:
                pytest.fail(f"export of {task}/{lang} failed:\n{result.stderr[-3000:]}")
        return out

"""ner/pos exports from the CLI (their accuracy gate against fp32: tests/export/test_gate.py)."""

import subprocess
import sys

import pytest

from tests.sentiment.test_tokens import TEXTS
from tests.support import ROOT

pytestmark = pytest.mark.slow  # real servers, exports or browsers: not the quick tier


def export(source, out, data) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "service.export", "--task", "ner", "--lang", "es"]
    command += ["--source", str(source), "--out", str(out), "--data", str(data)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def test_gold_labelled_data_is_refused_for_ner(standins, tmp_path) -> None:
    """ner/pos have no gold label per text: the gate compares them with fp32 (tests/export/test_gate.py)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test_text.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    result = export(standins.source("ner", "es"), tmp_path / "ner", tmp_path / "data")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ner/pos are checked against fp32 by the gate" in result.stderr
    assert not (tmp_path / "ner" / "manifest.json").exists()


def test_pairs_pysentimiento_lacks_are_refused_by_the_cli(tmp_path) -> None:
    command = [
        sys.executable,
        "-m",
        "service.export",
        "--task",
        "ner",
        "--lang",
        "it",
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "pysentimiento has no ner model for it" in result.stderr

"""ner/pos exports: INT8 behind an accuracy gate on word labels and entity spans against fp32."""

import json
import subprocess
import sys

import pytest

from tests.sentiment.test_tokens import TEXTS
from tests.support import ROOT

pytestmark = pytest.mark.slow  # real servers, exports or browsers: not the quick tier


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("token-data")
    (folder / "test_text.txt").write_text("\n".join(TEXTS * 4) + "\n", encoding="utf-8")
    return folder


def export(source, out, data, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "service.export",
        "--task",
        "ner",
        "--lang",
        "es",
        "--source",
        str(source),
    ]
    command += ["--out", str(out), "--data", str(data), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def test_int8_ner_records_its_agreement_with_fp32(standins, data, tmp_path) -> None:
    result = export(standins.source("ner", "es"), tmp_path / "ner", data, "--min-agreement", "0.5")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "ner" / "manifest.json").read_text())
    assert manifest["problem_type"] == "token_classification"
    accuracy = manifest["accuracy"]
    assert accuracy["words"] > 4 * len(TEXTS) and accuracy["texts"] == 4 * len(TEXTS)
    assert 0.5 <= accuracy["label_agreement"] <= 1.0 and 0.0 <= accuracy["entity_span_f1"] <= 1.0


def test_an_export_under_the_gate_is_refused_and_nothing_is_published(standins, data, tmp_path) -> None:
    result = export(standins.source("ner", "es"), tmp_path / "ner", data, "--min-agreement", "1.01")
    assert result.returncode == 2
    assert "under the 101.0 % gate" in result.stderr and "Traceback" not in result.stderr
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

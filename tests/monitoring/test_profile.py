"""`python -m bench.profile`: the load it sends, and a tiny real run that writes the report.

The runs use no model (503s come back at once), so they stay fast; what is tested is the driving,
tracing and reporting, which do not depend on what the model is.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.profiling import load
from tests.support import ROOT

pytestmark = pytest.mark.slow  # real servers, exports or browsers: not the quick tier


HAS_MEMRAY = importlib.util.find_spec("memray") is not None


def test_the_load_mixes_every_kind_and_warms_up_first():
    warmup, rest = load.plan(requests=200, ocr_files=6, max_batch=32, seed=1)
    assert len(warmup) + len(rest) == 206
    assert [call.name for call in warmup[:2]] == ["single:es", "single:en"]
    assert warmup[-1].kind == "ocr"  # the engine loads during warm-up too
    kinds = {call.kind for call in rest}
    assert kinds == {"single", "batch", "hostile", "ops", "ocr"}
    assert len({call.name for call in rest if call.kind == "hostile"}) >= 8
    ocr_positions = [index for index, call in enumerate(rest) if call.kind == "ocr"]
    assert len(ocr_positions) == 5 and ocr_positions[0] > 10 and ocr_positions[-1] < len(rest) - 10
    assert load.plan(200, 6, 32, seed=1)[1] == rest  # seeded: two runs send the same load


def profile(tmp_path: Path, *args: str) -> str:
    out = tmp_path / "report.md"
    env = {
        **os.environ,
        "BACKEND": "onnx",
        "ONNX_DIR": str(tmp_path / "no-models"),
        "MEMORY_BUDGET_MB": "1024",
    }
    command = [sys.executable, "-m", "bench.profile", "--out", str(out), "--workdir", str(tmp_path), *args]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out.read_text()


def test_profile_run_writes_the_report(tmp_path):
    text = profile(tmp_path, "--requests", "20", "--ocr-files", "2")
    for heading in (
        "## Findings",
        "## RSS over time (untraced pass)",
        "| pass | before the load |",
        "## Requests (untraced pass)",
        "### Retained at the end, by allocating line",
        "### Retained at the end, by the project line that led there",
        "### Growth over the second half of the load",
    ):
        assert heading in text
    assert "| after warm-up (4 requests) |" in text and "| peak |" in text
    assert "| untraced |" in text and "| tracemalloc |" in text
    assert "| single:es |" in text and "| ocr:" in text
    assert any(f"| {name} |" in text for name in load.HOSTILE)
    assert "5xx or failed connections: " in text  # no model here: the analyses answer 503
    assert (tmp_path / "tracemalloc" / "snapshot-1.pickle").is_file()
    assert ("(memray)" in text) == HAS_MEMRAY


def test_profile_can_trace_from_the_interpreter_start(tmp_path):
    text = profile(tmp_path, "--requests", "5", "--trace-from", "start", "--frames", "1", "--no-memray")
    assert "Traced: the whole process, from the interpreter's start" in text
    assert "| warm |" in text  # a snapshot after warm-up too
    assert "(memray)" not in text


def test_the_app_has_no_profiling_route(make_client):
    """Snapshots leave the traced server by signal and file: no route could ever serve them."""
    paths = make_client().get("/openapi.json").json()["paths"]
    assert not [path for path in paths if "trace" in path or "debug" in path or "profil" in path]

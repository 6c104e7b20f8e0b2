"""Ray is an extra: the plain server, installed and started the default way, never imports it."""

from pathlib import Path

import pytest

from tests.support import ROOT
from tests.system.test_system import run_python

pytestmark = pytest.mark.slow  # real servers, exports or browsers: not the quick tier


SERVE_A_FEW_REQUESTS = """
import json, sys
from fastapi.testclient import TestClient
from main import app
with TestClient(app) as client:
    answers = [client.get("/health").status_code, client.get("/system").status_code,
               client.post("/analyze", json={"text": "hola"}).status_code,
               client.post("/analyze/file", files={"file": ("t.csv", b"text\\nhola\\n")}).status_code]
print(json.dumps({"answers": answers, "loaded": sorted(m for m in sys.modules
                  if m.split(".")[0] in ("ray", "pyarrow") or m.startswith("service.scale"))}))
"""


def test_the_plain_server_never_imports_ray(onnx_minilm: Path):
    report = run_python(SERVE_A_FEW_REQUESTS, MODEL_SENTIMENT_ES=str(onnx_minilm), MEMORY_BUDGET_MB="4096")
    assert report["answers"] == [200, 200, 200, 200]
    assert report["loaded"] == []


def test_the_default_install_does_not_name_ray():
    for name in ("requirements.txt", "requirements-export.txt", "requirements-torch.txt"):
        lines = [line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()]
        assert not [line for line in lines if line.startswith(("ray", "-r requirements-ray"))], name
    start = (ROOT / "start.sh").read_text()
    assert '[ "$extras" = "ray" ] && install_requirements requirements-ray.txt' in start

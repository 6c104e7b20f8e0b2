"""The container image keeps the 512 MB promise: built from the local Debian base with the shared
MiniLM exported at build time, run under --memory 512m --cpus 0.1 (Render's free plan), every route
answers as the server outside the container does, and a SIGTERM ends it with 0.

One container serves the module (each start at 0.1 CPU takes a minute); its SIGTERM test is last.
"""

import json
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from bench.container import (
    COMPOSE_FILE,
    LOCAL_BASE,
    Container,
    first_answer_s,
    podman,
    running_container,
)
from bench.server import free_port, multipart
from tests.ocr.samples import encode, text_page
from tests.support import real_server, tessdata_missing

pytestmark = [pytest.mark.slow, pytest.mark.container]

LIMIT = ["--memory", "512m", "--cpus", "0.1"]
GRACEFUL_TIMEOUT_S = 25  # the image's default (start.sh)
TEXTS = ["¡Qué buen día hace hoy! 😍", "odio esperar tanto @usuario", "la reunión es a las diez", "meh"]
MAX_LAYERS_MB = 250


@pytest.fixture(scope="module")
def served(image: str) -> Iterator[Container]:
    with running_container(image, *LIMIT) as container:
        yield container


def history(image: str) -> list[dict]:
    return json.loads(podman("history", "--format", "json", image).stdout)


def test_the_layers_above_the_base_weigh_at_most_250_mb_model_weights_aside(image: str) -> None:
    layers, base = history(image), history(LOCAL_BASE)  # newest first; the image's ends with the base's
    assert layers[len(layers) - len(base) :] == base
    above = layers[: len(layers) - len(base)]
    breakdown = [(layer["size"] / 2**20, " ".join(layer["CreatedBy"].split())) for layer in above]
    print("\n".join(f"{mb:8.1f} MiB  {created_by[:110]}" for mb, created_by in breakdown))
    weights = [mb for mb, created_by in breakdown if created_by.endswith(" in models")]
    assert len(weights) == 1, breakdown  # the exported models' layer, and only it, is set aside
    assert sum(mb for mb, _ in breakdown) - weights[0] <= MAX_LAYERS_MB, breakdown


def test_the_runtime_image_has_no_torch_no_transformers_no_spacy_and_no_compiler(image: str) -> None:
    code = (
        "import importlib.util as u; "
        "print([m for m in ('torch', 'transformers', 'optimum', 'pysentimiento', 'spacy', 'onnx') "
        "if u.find_spec(m)])"
    )
    found = podman("run", "--rm", image, ".venv/bin/python", "-c", code).stdout.strip()
    assert found == "[]"
    files = podman(
        "run", "--rm", image, "sh", "-c", "ls .venv/lib/*/site-packages; command -v gcc cc || true"
    )
    assert "torch" not in files.stdout and "nvidia" not in files.stdout and "gcc" not in files.stdout


def test_memory_reports_the_512_mb_budget_from_the_containers_cgroup(served: Container) -> None:
    memory = served.request("GET", "/memory").json()
    assert memory["budget_mb"] == 512
    assert memory["budget_source"].startswith("cgroup"), memory["budget_source"]
    assert served.cgroup_memory()["limit_mb"] == 512


def test_analyze_answers_what_the_server_outside_answers(
    served: Container, onnx_minilm_int8, tmp_path
) -> None:
    """The image exported the same MiniLM with the same recipe at build time."""
    print(f"\nwake-up at --cpus 0.1: first /analyze answer {first_answer_s(served):.1f} s after podman run")
    body = json.dumps({"texts": TEXTS}).encode()
    headers = {"Content-Type": "application/json"}
    inside = served.request("POST", "/analyze", body, headers, timeout=300)
    assert inside.status == 200, inside.body
    with real_server(tmp_path, MODEL_SENTIMENT_ES=str(onnx_minilm_int8), MEMORY_BUDGET_MB="512") as outside:
        expected = outside.request("POST", "/analyze", body, headers, timeout=120).json()["results"]
    results = inside.json()["results"]
    assert [r["label"] for r in results] == [r["label"] for r in expected]
    for ours, theirs in zip(results, expected, strict=True):
        assert ours["probas"].keys() == theirs["probas"].keys()
        assert all(abs(ours["probas"][k] - theirs["probas"][k]) <= 1e-6 for k in ours["probas"]), (
            ours,
            theirs,
        )


@pytest.mark.skipif(tessdata_missing() is not None, reason="the generated page needs the DejaVu font here")
def test_ocr_reads_a_generated_page_in_spanish_and_english(served: Container) -> None:
    for lang, words in (("es", ["mañana", "árbol"]), ("en", ["invoice", "total"])):
        body, content_type = multipart(
            {"lang": lang}, "page.png", encode(text_page([" ".join(words)])), "image/png"
        )
        response = served.request("POST", "/ocr", body, {"Content-Type": content_type}, timeout=300)
        assert response.status == 200, response.body
        assert response.json()["pages"][0]["text"].split() == words


def test_the_dashboard_loads(served: Container) -> None:
    page = served.request("GET", "/dashboard")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert served.request("GET", "/dashboard/data").status == 200


def test_the_images_healthcheck_passes(served: Container) -> None:
    assert podman("healthcheck", "run", served.id, check=False).returncode == 0


def test_every_process_runs_as_a_user_other_than_root(served: Container) -> None:
    lines = served.exec("sh", "-c", "grep -h '^Uid:' /proc/[0-9]*/status").splitlines()
    uids = {uid for line in lines for uid in line.split()[1:]}  # real, effective, saved, fs
    assert len(lines) >= 3 and "0" not in uids, lines  # bash, supervise.sh, the server, ...


def test_sigterm_stops_it_with_status_0_within_the_grace_period(served: Container) -> None:
    status, seconds = served.stop(timeout_s=GRACEFUL_TIMEOUT_S + 30)
    assert status == 0, served.logs()
    assert seconds <= GRACEFUL_TIMEOUT_S + 5


@pytest.mark.skipif(shutil.which("podman-compose") is None, reason="podman-compose is not installed")
def test_podman_compose_brings_the_service_up(image: str) -> None:
    port = free_port()
    project = f"pysentimiento-test-{port}"
    env = {**os.environ, "IMAGE": image, "HOST_PORT": str(port)}
    compose = ["podman-compose", "-p", project, "-f", str(COMPOSE_FILE)]
    try:
        subprocess.run([*compose, "up", "-d", "api"], env=env, check=True, capture_output=True, timeout=300)
        (name,) = podman(
            "ps", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Names}}"
        ).stdout.split()
        container = Container(name, port, started=0.0)
        container.wait_healthy(timeout_s=300)
        assert container.cgroup_memory()["limit_mb"] == 512
    finally:
        subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, timeout=120)
        podman("volume", "rm", "-f", f"{project}_data", check=False)  # podman-compose 1.0.3 leaves both
        podman("network", "rm", "-f", f"{project}_default", check=False)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_the_compose_file_is_valid_and_its_gpu_service_reserves_an_nvidia_device() -> None:
    """The GPU service cannot run here (no GPU): docker-compose (1.29, Debian's; no daemon needed)
    checks the file against the compose schema and resolves it. podman-compose 1.0.3 has no `config`,
    and ignores profiles and device reservations."""
    import yaml

    out = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "config"], check=True, capture_output=True, text=True
    ).stdout
    services = yaml.safe_load(out)["services"]
    gpu = services["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert gpu["build"]["args"]["GPU"] == "true" and gpu["environment"]["USE_GPU"] == "true"
    assert services["render"]["cpus"] == 0.1 and all(s["mem_limit"] == "512m" for s in services.values())
    assert all(s["ports"] == ["127.0.0.1:8000:8000/tcp"] for s in services.values())
    assert all(s["volumes"] == ["data:/data:rw"] for s in services.values())

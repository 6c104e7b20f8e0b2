"""The image of container/Containerfile, built once per session from the local Debian base
(../shared/container/build-base.sh) with the shared MiniLM as its sentiment:es model."""

import os
import subprocess
from pathlib import Path

import pytest

from bench.container import LOCAL_BASE, build_image, model_context, podman, podman_unavailable
from tests.support import MINILM, SHARED

TAG = "localhost/pysentimiento-512:test"
BUILD_BASE = SHARED / "container" / "build-base.sh"


def wheels_dir() -> Path | None:
    """Where torch's CPU wheel is on this machine (PyTorch's index is not reachable here): CONTAINER_WHEELS,
    else /opt/wheels when it has one; None lets the build use PyTorch's CPU index."""
    folder = Path(os.environ.get("CONTAINER_WHEELS", "/opt/wheels"))
    return folder if any(folder.glob("torch-*+cpu-*.whl")) else None


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> str:
    reason = podman_unavailable()
    if reason is not None:
        pytest.skip(reason)
    if not (MINILM / "model.safetensors").is_file():
        pytest.skip(f"needs the trained model in {MINILM} (the project's ../shared is absent)")
    if podman("image", "exists", LOCAL_BASE, check=False).returncode:
        # Idempotent, ~3 min: Debian 12 and its Python from Debian's archive, no registry.
        subprocess.run(["bash", str(BUILD_BASE)], check=True, capture_output=True)
    workdir = tmp_path_factory.mktemp("container")
    wheels = wheels_dir()
    build_image(
        TAG,
        workdir / "build.log",
        export_models="sentiment:es",
        models=model_context(workdir / "models", {"sentiment-es": MINILM}),
        wheels=wheels,
        extra_index_url="" if wheels else "https://download.pytorch.org/whl/cpu",
    )
    return TAG

"""GET /dashboard in a real headless Chromium against a real server: it loads with no console
error and no request leaving the origin, its chart grows as it polls, the models table fills
after requests, and a screenshot is written."""

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import MINILM, real_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
LATEST_SCREENSHOT = Path("/tmp/dashboard.png")  # a copy where a person can look at it

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs playwright (pip install -r requirements-dev.txt)"
)
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)"
)


def wait_until(page, expression: str, timeout_s: float = 15.0) -> None:
    """Poll a JS expression from outside the page: page.wait_for_function evaluates with eval(),
    which the dashboard's Content-Security-Policy (rightly) forbids."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


def points(page) -> int:
    return int(page.eval_on_selector("#memory-chart", "canvas => Number(canvas.dataset.points)"))


def analyze(url: str, text: str) -> int:
    request = urllib.request.Request(
        f"{url}/analyze", json.dumps({"text": text}).encode(), {"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status
    except urllib.error.HTTPError as error:  # no model here: 503, still traffic for the chart
        return error.code


def rss_pixels(page) -> int:
    """Pixels of the chart drawn in the RSS line's colour: the chart is really drawn, not just counted."""
    return page.eval_on_selector(
        "#memory-chart",
        """canvas => {
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < data.length; i += 4)
                if (Math.abs(data[i] - 37) < 30 && Math.abs(data[i + 1] - 99) < 30 && data[i + 2] > 200) n++;
            return n;
        }""",
    )


def test_dashboard_in_headless_chromium(tmp_path):
    has_model = (MINILM / "model.safetensors").is_file()
    env = {"MEMORY_BUDGET_MB": "4096", "BACKEND": "torch", "MODEL_SENTIMENT_ES": str(MINILM)}
    if not has_model:  # the chart must still move, from RSS polling alone
        env = {"MEMORY_BUDGET_MB": "4096", "BACKEND": "onnx", "ONNX_DIR": str(tmp_path / "no-models")}
    with (
        real_server(tmp_path, **env) as server,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        errors: list[str] = []
        foreign: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on(
            "request",
            lambda request: None if request.url.startswith(server.url) else foreign.append(request.url),
        )

        page.goto(f"{server.url}/dashboard?refresh=250")
        wait_until(page, "Number(document.querySelector('#memory-chart').dataset.points) >= 2")
        before = points(page)
        statuses = [
            analyze(server.url, text) for text in ("¡Qué buen día! 😍", "Odio los lunes", "Ni fu ni fa")
        ]
        assert set(statuses) == ({200} if has_model else {503}), statuses
        wait_until(page, f"Number(document.querySelector('#memory-chart').dataset.points) >= {before + 4}")
        wait_until(page, "document.querySelector('#routes tbody').textContent.includes('POST /analyze')")
        if has_model:
            assert "sentiment:es" in page.inner_text("#models tbody")
        assert float(page.inner_text("#t-rss")) > 0
        assert float(page.inner_text("#t-rate")) > 0  # the three /analyze calls, within the last 10 s
        assert rss_pixels(page) > 50

        screenshot = tmp_path / "dashboard.png"
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert screenshot.stat().st_size > 10_000
    shutil.copyfile(screenshot, LATEST_SCREENSHOT)
    assert errors == []
    assert foreign == []

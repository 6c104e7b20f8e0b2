"""GET /dashboard in a real headless Chromium against a real server.

Without a key set: the page loads with no console error and no request leaving the origin, draws
the server's history on first paint (load, eviction and refusal marked on the memory chart), and
keeps growing as it polls. With API_KEY set: the shell opens, asks for the key once, keeps it for
the tab only (never in the URL or a cookie), and says clearly when a key is wrong. Every test
writes a screenshot (to DASHBOARD_SCREENSHOTS too, when set, for a person to look at).
"""

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.server import Server
from tests.support import MINILM, needs_minilm, real_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
KEY = "s3cret-dashboard-key"
KEY_STORE = "pysentimiento-dashboard-key"
SCREENSHOTS = os.environ.get("DASHBOARD_SCREENSHOTS")

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs playwright (pip install -r requirements-dev.txt)"
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)",
    ),
]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Tab:
    """A page in its own browser context (its own sessionStorage and cookies), and what it did."""

    page: object
    origin: str
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    requests: list[object] = field(default_factory=list)

    def watch(self) -> None:
        page = self.page
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", lambda request: self.requests.append(request))
        page.on("request", lambda r: None if r.url.startswith(self.origin) else self.foreign.append(r.url))

    def screenshot(self, tmp_path: Path, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(SCREENSHOTS) / path.name)
        return path


def new_tab(browser, server: Server) -> Tab:
    context = browser.new_context(viewport={"width": 1280, "height": 1300})
    tab = Tab(context.new_page(), server.url)
    tab.watch()
    return tab


def wait_until(page, expression: str, timeout_s: float = 20.0) -> None:
    """Poll a JS expression from outside the page: page.wait_for_function evaluates with eval(),
    which the dashboard's Content-Security-Policy (rightly) forbids."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


def points(page) -> int:
    return int(page.eval_on_selector("#memory-chart", "canvas => Number(canvas.dataset.points)"))


def first_paint(page) -> dict:
    wait_until(page, "Boolean(document.querySelector('#memory-chart').dataset.firstPaint)")
    return json.loads(page.eval_on_selector("#memory-chart", "canvas => canvas.dataset.firstPaint"))


def analyze(url: str, text: str, lang: str = "es", key: str | None = None) -> int:
    headers = {"content-type": "application/json", **({"X-API-Key": key} if key else {})}
    body = json.dumps({"text": text, "lang": lang}).encode()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(f"{url}/analyze", body, headers), timeout=120
        ) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def get_status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def colour_pixels(page, rgb: tuple[int, int, int]) -> int:
    """Pixels of the memory chart drawn in about this colour: it is really drawn, not just counted."""
    return page.eval_on_selector(
        "#memory-chart",
        """(canvas, rgb) => {
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < data.length; i += 4)
                if (Math.abs(data[i] - rgb[0]) < 30 && Math.abs(data[i + 1] - rgb[1]) < 30
                    && Math.abs(data[i + 2] - rgb[2]) < 30) n++;
            return n;
        }""",
        list(rgb),
    )


RSS_BLUE = (37, 99, 235)
EVICTION_PINK = (219, 39, 119)


def test_without_a_key_set_the_page_loads_polls_and_starts_from_the_past(browser, tmp_path):
    """No model here: /analyze answers 503, which the history counts before the page is open."""
    env = {"MEMORY_BUDGET_MB": "4096", "BACKEND": "onnx", "ONNX_DIR": str(tmp_path / "no-models")}
    with real_server(tmp_path, HISTORY_STEP_S="0.25", **env) as server:
        asked = time.time()
        assert [analyze(server.url, text) for text in ("¡Qué buen día! 😍", "Odio los lunes")] == [503, 503]
        time.sleep(1.0)  # a few samples after the requests
        tab = new_tab(browser, server)
        page = tab.page
        page.goto(f"{server.url}/dashboard?refresh=250")
        painted = first_paint(page)
        assert painted["oldest"] < asked  # drawn from the server's history, not only since the page opened
        assert page.is_hidden("#key-form")
        wait_until(
            page, f"Number(document.querySelector('#memory-chart').dataset.points) >= {painted['points'] + 4}"
        )
        assert analyze(server.url, "Ni fu ni fa") == 503
        wait_until(page, "document.querySelector('#routes tbody').textContent.includes('POST /analyze')")
        wait_until(page, "Number(document.querySelector('#t-rate').textContent) > 0")  # within the last 10 s
        assert float(page.inner_text("#t-rss")) > 0
        assert "worker start" in page.inner_text("#events tbody")
        assert "samples every 0.25 s" in page.inner_text("#history-meta")
        assert "kept by this worker only" in page.inner_text("#history-meta")
        assert colour_pixels(page, RSS_BLUE) > 50
        tab.screenshot(tmp_path, "dashboard-no-key")
    assert tab.errors == []
    assert tab.foreign == []


@needs_minilm
def test_a_load_an_eviction_and_a_refusal_are_on_first_paint(browser, tmp_path):
    """`sentiment:es` loads; `sentiment:en` is a hub id whose size guess (650 MB) cannot fit next to
    it, so the registry evicts `es` and then refuses `en` (no hub is asked: it never fits)."""
    env = {
        "BACKEND": "torch",
        "MEMORY_BUDGET_MB": "900",
        "MODEL_SENTIMENT_ES": str(MINILM),
        "MODEL_SENTIMENT_EN": "no-such-org/no-such-model",
        "HF_HUB_OFFLINE": "1",
        "HISTORY_STEP_S": "0.5",
    }
    with real_server(tmp_path, **env) as server:
        asked = time.time()
        assert [analyze(server.url, text) for text in ("¡Qué buen día! 😍", "Odio los lunes")] == [200, 200]
        assert analyze(server.url, "I love it", lang="en") == 503
        time.sleep(1.5)
        tab = new_tab(browser, server)
        page = tab.page
        page.goto(f"{server.url}/dashboard?refresh=10000")  # no second reading before the checks
        painted = first_paint(page)
        assert painted["oldest"] < asked
        assert painted["events"] >= 4  # start, load, eviction, refusal, all marked on the chart
        events = page.inner_text("#events tbody")
        for kind, about in (
            ("load", "sentiment:es"),
            ("eviction", "sentiment:es"),
            ("refusal", "sentiment:en"),
        ):
            assert any(kind in row and about in row for row in events.splitlines()), (kind, events)
        assert colour_pixels(page, EVICTION_PINK) > 20  # the eviction's mark
        assert colour_pixels(page, RSS_BLUE) > 50
        assert "sentiment:es" not in page.inner_text("#models tbody")  # evicted, as /memory says
        tab.screenshot(tmp_path, "dashboard-history")
    assert tab.errors == []
    assert tab.foreign == []


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("keyed")
    env = {
        "API_KEY": KEY,
        "BACKEND": "onnx",
        "ONNX_DIR": str(tmp_path / "no-models"),
        "HISTORY_STEP_S": "0.5",
    }
    with real_server(tmp_path, **env) as server:
        yield server


def test_with_a_key_set_only_the_shell_opens_without_it(keyed_server):
    url = keyed_server.url
    assert get_status(f"{url}/dashboard") == 200
    for feed in ("/dashboard/data", "/dashboard/history"):
        assert get_status(f"{url}{feed}") == 401
        assert get_status(f"{url}{feed}", {"X-API-Key": "wrong"}) == 401
        assert get_status(f"{url}{feed}", {"X-API-Key": KEY}) == 200


def test_with_a_key_set_the_page_asks_once_and_keeps_it_for_the_tab(browser, keyed_server, tmp_path):
    assert analyze(keyed_server.url, "hola", key=KEY) == 503  # some traffic for the history
    tab = new_tab(browser, keyed_server)
    page = tab.page
    page.goto(f"{keyed_server.url}/dashboard?refresh=500")
    wait_until(page, "!document.querySelector('#key-form').hidden")
    assert "protected" in page.inner_text("#key-form")
    assert page.inner_text("#t-rss") == "–"  # nothing shown without the key
    tab.screenshot(tmp_path, "dashboard-asks-for-key")
    asked_without_key = len(tab.requests)
    page.fill("#key-input", KEY)
    page.click("#key-form button[type=submit]")
    first_paint(page)
    wait_until(page, "document.querySelector('#t-rss').textContent !== '–'")
    assert page.is_hidden("#key-form") and page.is_visible("#forget-key")
    assert "POST /analyze" in page.inner_text("#routes tbody")
    tab.screenshot(tmp_path, "dashboard-with-key")

    # Kept for this tab: a reload does not ask again.
    page.reload()
    wait_until(page, "document.querySelector('#t-rss').textContent !== '–'")
    assert page.is_hidden("#key-form")
    # ...in sessionStorage only: never in the URL, never a cookie, sent as a header.
    assert page.evaluate(f"sessionStorage.getItem('{KEY_STORE}')") == KEY
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    assert all(KEY not in request.url for request in tab.requests)
    feeds = [r for r in tab.requests[asked_without_key:] if "/dashboard/" in r.url]
    assert feeds and all(r.headers.get("x-api-key") == KEY for r in feeds)
    assert all(
        "x-api-key" not in r.headers
        for r in tab.requests
        if not r.url.startswith(keyed_server.url + "/dashboard/")
    )
    assert KEY not in page.content()
    # Another tab of the same browser asks again.
    other = page.context.new_page()
    other.goto(f"{keyed_server.url}/dashboard")
    wait_until(other, "!document.querySelector('#key-form').hidden")
    other.close()
    # "forget the key" forgets it.
    page.click("#forget-key")
    assert page.is_visible("#key-form")
    assert page.evaluate(f"sessionStorage.getItem('{KEY_STORE}')") is None
    assert all("401" in error for error in tab.errors), tab.errors  # only the refused requests
    assert tab.foreign == []


def test_a_wrong_key_is_said_clearly_and_not_kept(browser, keyed_server, tmp_path):
    tab = new_tab(browser, keyed_server)
    page = tab.page
    page.goto(f"{keyed_server.url}/dashboard")
    wait_until(page, "!document.querySelector('#key-form').hidden")
    sent = len(tab.requests)
    page.fill("#key-input", "clé")  # a header cannot carry it: said at once, nothing sent
    page.click("#key-form button[type=submit]")
    assert "plain ASCII" in page.inner_text("#key-error")
    assert len(tab.requests) == sent
    page.fill("#key-input", "not-the-key")
    page.click("#key-form button[type=submit]")
    wait_until(page, "document.querySelector('#key-error').textContent.includes('Wrong API key')")
    assert page.is_visible("#key-form")
    assert page.inner_text("#t-rss") == "–"
    assert "waiting for the API key" in page.inner_text("#status")
    assert page.evaluate(f"sessionStorage.getItem('{KEY_STORE}')") is None
    tab.screenshot(tmp_path, "dashboard-wrong-key")
    page.fill("#key-input", KEY)  # and the right one still works after it
    page.click("#key-form button[type=submit]")
    wait_until(page, "document.querySelector('#t-rss').textContent !== '–'")
    assert page.inner_text("#key-error") == ""
    assert tab.foreign == []

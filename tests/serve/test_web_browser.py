"""The search page in a real headless Chromium (Debian's package, driven by Playwright's Python
client; never a downloaded browser) against `python -m search serve` on 127.0.0.1.

The index is the demo corpus plus four records built in a temp folder: an XSS title, a
`javascript:` homepage and three records in another section so a filter visibly changes the
results.  Screenshots go to build/screenshots/ for a person to look at; with
SEARCH_UPDATE_SCREENSHOT=1 the README's docs/screenshot.png is rewritten too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import DEMO_CORPUS, ROOT, write_jsonl

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("SEARCH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "build" / "screenshots"
DOCS_SCREENSHOT = ROOT / "docs" / "screenshot.png"
QUERY = "cozy farming game"
XSS_TITLE = "<img src=x onerror=alert(1)>"
EXTRA_RECORDS = [
    {
        "id": "xss-test",
        "title": XSS_TITLE,
        "text": "a cozy farming game where you grow crops and raise animals",
        "section": "games",
        "version": "1.0",
        "homepage": "javascript:alert(2)",
    },
    {
        "id": "typing-tutor",
        "title": "Typing tutor for children",
        "text": "learn to type with fun lessons for kids",
        "section": "education",
        "version": "2.1",
        "homepage": "https://example.org/typing",
    },
    {
        "id": "star-atlas",
        "title": "Planetarium and star atlas",
        "text": "explore the night sky, constellations and planets in a desktop planetarium",
        "section": "education",
        "version": "0.9",
        "homepage": "",
    },
    {
        "id": "farm-sim-edu",
        "title": "Farm life simulator for classrooms",
        "text": "a gentle farming simulation that teaches children how crops grow",
        "section": "education",
        "version": "1.2",
        "homepage": "http://example.org/farm",
    },
]
SERVER_START_SECONDS = 120


def _chromium_or_skip() -> Path:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    pytest.skip(
        f"Chromium not found at {CHROMIUM}: `make browser` installs Debian's chromium package "
        "(needs root and apt); the browser test cannot run without it"
    )


@pytest.fixture(scope="module")
def web_index(tmp_path_factory, model_dir) -> Path:
    folder = tmp_path_factory.mktemp("web")
    records = DEMO_CORPUS.read_text(encoding="utf-8").splitlines() + EXTRA_RECORDS
    corpus = write_jsonl(folder / "corpus.jsonl", records)
    out = folder / "index"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "search",
            "build",
            "--corpus",
            str(corpus),
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--fields",
            "section,version,homepage",
            "--quiet",
        ],
        cwd=ROOT,
        check=True,
        timeout=900,
    )
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    _chromium_or_skip()  # skip before the model, the index build and the server
    model_dir, web_index = request.getfixturevalue("model_dir"), request.getfixturevalue("web_index")
    with serve(model_dir, web_index, tmp_path_factory.mktemp("serve") / "serve.log", "/info") as base:
        yield base


@contextlib.contextmanager
def serve(model_dir: Path, index: Path, log_path: Path, wait_for: str):
    """`python -m search serve` on a free port; yields its base URL once `wait_for` answers 200."""
    port = _free_port()
    log = open(log_path, "w+b")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "search",
            "serve",
            "--model",
            str(model_dir),
            "--index",
            str(index),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            "1",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"`python -m search serve` exited {proc.returncode}:\n{log.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(base + wait_for, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not answering {wait_for} after {SERVER_START_SECONDS}s")
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    executable = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # launch() gives every run a fresh temporary profile; each test gets its own context too.
        b = pw.chromium.launch(executable_path=str(executable), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Watched:
    """A page plus everything it did that a test must check: dialogs, script errors, outside requests."""

    def __init__(self, browser, base: str, **context_args):
        self.base = base
        self.context = browser.new_context(**context_args)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.set_default_timeout(30_000)

    def open(self, path: str = "/"):
        self.page.goto(self.base + path)
        self.page.wait_for_selector("html[data-info=loaded]")  # /info answered, filter controls built

    def check_clean(self, allow_http_errors: bool = False):
        errors = [
            e for e in self.errors if not (allow_http_errors and "Failed to load resource: the server responded" in e)
        ]
        assert errors == []
        assert self.dialogs == []  # nothing from the corpus ever ran as script
        outside = [u for u in self.requests if not (u.startswith(self.base + "/") or u.startswith("data:"))]
        assert outside == []  # no CDN, no fonts, nothing but the app itself

    def shot(self, name: str, full_page: bool = True):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def close(self):
        self.context.close()

    # helpers
    def card_ids(self) -> list[str]:
        return self.page.locator("#results > li.card").evaluate_all("cards => cards.map(c => c.dataset.id)")

    def status(self) -> str:
        return self.page.locator("#status").inner_text()

    def wait_status(self, prefix: str):
        self.page.wait_for_function("p => document.getElementById('status').textContent.startsWith(p)", arg=prefix)


@pytest.fixture
def watched(browser, server):
    w = Watched(browser, server, viewport={"width": 1100, "height": 900})
    yield w
    w.close()


def query_string(url: str) -> dict[str, list[str]]:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(url).query)


def test_search_similar_filter_page_and_history(watched):
    page = watched.page
    watched.open()
    assert watched.status().startswith("Type a query")
    assert page.locator("#filter-controls select[data-field=section] option").all_inner_texts()[1:] == [
        "games (1,109)",
        "education (3)",
    ]

    # type a query, see results
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    watched.wait_status("Results 1–10")
    assert query_string(page.url) == {"q": [QUERY]}
    first_page = watched.card_ids()
    assert len(first_page) == 10 and "xss-test" in first_page
    assert page.locator("#timing").inner_text().startswith("Answered in ")
    assert " ms" in page.locator("#timing").inner_text()

    # the XSS record is text: the title shows literally, no <img> exists, its javascript: homepage is no link
    xss = page.locator("li.card[data-id=xss-test]")
    assert xss.locator("h3").inner_text() == XSS_TITLE
    assert page.locator("img").count() == 0
    assert xss.locator("dd[data-field=homepage]").inner_text() == "javascript:alert(2)"
    assert xss.locator("a").count() == 0
    links = page.locator("#results dd[data-field=homepage] a").evaluate_all("as => as.map(a => a.href)")
    assert links and all(h.startswith(("http://", "https://")) for h in links)

    # open similar items on the first result
    first = page.locator("#results > li.card").first
    first_id = first.get_attribute("data-id")
    first.locator("button.similar-button").click()
    first.locator(".similar-item").first.wait_for()
    assert first.locator("button.similar-button").get_attribute("aria-expanded") == "true"
    similar = first.locator(".similar-item .item-id").all_inner_texts()
    assert 1 <= len(similar) <= 5 and f"({first_id})" not in similar
    # and its description, fetched from /items/{id}
    first.locator("summary").click()
    page.wait_for_function(
        "el => !['', 'Loading…'].includes(el.textContent)", arg=first.locator(".description").element_handle()
    )
    stored = page.request.get(f"{watched.base}/items/{first_id}").json()["text"]
    assert first.locator(".description").text_content() == stored
    watched.shot("results.png")

    # next page, then back with the button
    page.click("#next-page")
    watched.wait_status("Results 11–20")
    assert query_string(page.url) == {"q": [QUERY], "offset": ["10"]}
    second_page = watched.card_ids()
    assert len(second_page) == 10 and not set(second_page) & set(first_page)
    assert page.locator("#results > li.card .rank").first.inner_text() == "#11"
    assert page.evaluate("document.activeElement.id") == "results-heading"  # focus follows the new page
    watched.shot("page-2.png")
    page.click("#prev-page")
    watched.wait_status("Results 1–10")
    assert watched.card_ids() == first_page

    # apply a filter: only the education records are left
    page.select_option("#filter-controls select[data-field=section]", "education")
    watched.wait_status("Results 1–3")
    assert query_string(page.url) == {"q": [QUERY], "section": ["education"]}
    assert set(watched.card_ids()) == {"typing-tutor", "star-atlas", "farm-sim-edu"}
    assert set(page.locator("#results dd[data-field=section]").all_inner_texts()) == {"education"}
    assert page.locator("#pager").is_hidden()
    watched.shot("filtered.png")

    # browser history: back restores the unfiltered search, forward the filtered one
    page.go_back()
    watched.wait_status("Results 1–10")
    assert watched.card_ids() == first_page
    assert page.input_value("#filter-controls select[data-field=section]") == ""
    page.go_forward()
    watched.wait_status("Results 1–3")
    assert page.input_value("#filter-controls select[data-field=section]") == "education"

    # a shared link reloads the same search
    shared = page.url
    page.goto("about:blank")
    page.goto(shared)
    watched.wait_status("Results 1–3")
    assert page.input_value("#q") == QUERY
    assert page.input_value("#filter-controls select[data-field=section]") == "education"

    # the search mode, when the server offers several: words only, still filtered
    if len(page.request.get(f"{watched.base}/info").json().get("modes", {}).get("available", [])) > 1:
        page.select_option("#mode", "keyword")
        watched.wait_status("Results 1–")
        assert query_string(page.url) == {"q": [QUERY], "section": ["education"], "mode": ["keyword"]}
        assert set(page.locator("#results dd[data-field=section]").all_inner_texts()) == {"education"}
        found_by = page.locator("#results .signals").all_inner_texts()
        assert found_by and all("words" in text for text in found_by), found_by
    watched.check_clean()


def test_keyboard_only(watched):
    page = watched.page
    watched.open()
    page.evaluate("document.activeElement.blur()")  # the box has autofocus; start from nowhere
    assert page.evaluate("document.activeElement === document.body")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("space shooter")
    assert page.input_value("#q") == "space shooter"  # the "/" only moved the focus
    page.keyboard.press("Enter")
    watched.wait_status("Results 1–10")

    def tab_to(selector: str, limit: int = 150) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate("s => document.activeElement.matches(s)", selector):
                return
        raise AssertionError(f"Tab never reached {selector}")

    tab_to("button.similar-button")
    page.keyboard.press("Enter")
    page.locator(".similar-item").first.wait_for()
    shot = watched.shot("keyboard.png", full_page=False)  # demo records only: the README's picture
    if os.environ.get("SEARCH_UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)
    tab_to("#next-page")
    page.keyboard.press("Enter")
    watched.wait_status("Results 11–20")
    # the section filter by keyboard
    page.keyboard.press("/")
    tab_to("select[data-field=section]")
    page.keyboard.press("ArrowDown")  # Chromium changes a closed select's value with the arrow keys
    watched.wait_status("Results 1–10")
    assert query_string(page.url)["section"] == ["games"]
    watched.check_clean()


def test_loading_empty_and_error_states(watched):
    page = watched.page
    # record every state the status line goes through (the loading state is too quick to catch otherwise)
    page.add_init_script("""
      document.addEventListener("DOMContentLoaded", () => {
        window.__states = [];
        const box = document.getElementById("status");
        new MutationObserver(() => window.__states.push([box.textContent, box.className,
          document.getElementById("results").getAttribute("aria-busy")])).observe(box, {childList: true,
          characterData: true, subtree: true, attributes: true});
      });""")
    watched.open("/?q=strategy&section=education")
    # a function, not a bare expression: Playwright evals a bare expression again on every poll, and after the
    # first poll the page's CSP (no 'unsafe-eval') forbids that; a function is evaled once and then called
    page.wait_for_function(
        "() => document.getElementById('status').textContent.startsWith('No results')"
        " || document.querySelectorAll('#results > li').length > 0"
    )
    states = page.evaluate("window.__states")
    assert ["Searching for “strategy”…", "status loading", "true"] in states

    # empty: a filter value no record has
    watched.open("/?q=strategy&section=no-such-section")
    watched.wait_status("No results")
    assert "with these filters" in watched.status()
    assert page.locator("#results > li").count() == 0 and page.locator("#error").is_hidden()
    watched.shot("empty.png")

    # error: the API's own message is shown (a query over the length limit)
    long_query = "x" * 1001
    api = page.request.get(f"{watched.base}/search?q={long_query}")
    assert api.status == 400 or api.status == 422
    message = api.json()["error"]["message"]
    watched.open(f"/?q={long_query}")
    page.locator("#error:not([hidden])").wait_for()
    assert message in page.locator("#error").inner_text()
    assert page.locator("#results > li").count() == 0
    watched.shot("error.png")
    watched.check_clean(allow_http_errors=True)


def test_phone_width_dark_scheme(browser, server):
    phone = Watched(
        browser,
        server,
        viewport={"width": 360, "height": 740},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        color_scheme="dark",
    )  # the dark scheme, for the eye
    try:
        phone.open(f"/?q={QUERY.replace(' ', '+')}")
        phone.wait_status("Results 1–10")
        widths = phone.page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"page scrolls sideways at phone width: {widths}"
        box = phone.page.locator("#q").bounding_box()
        assert box["width"] > 150  # the search box keeps a usable width
        phone.shot("phone.png", full_page=False)
        phone.check_clean()
    finally:
        phone.close()


def test_page_opened_while_the_server_is_still_loading(browser, server, request, tmp_path_factory):
    """A fresh server answers /livez at once and 503 "not ready" until the model and index are in;
    the page waits (Retry-After) instead of showing a half-built form."""
    model_dir, web_index = request.getfixturevalue("model_dir"), request.getfixturevalue("web_index")
    with serve(model_dir, web_index, tmp_path_factory.mktemp("cold") / "serve.log", "/livez") as base:
        cold = Watched(browser, base, viewport={"width": 1100, "height": 900})
        statuses: list[tuple[str, int]] = []
        cold.page.on("response", lambda r: statuses.append((r.url.replace(base, ""), r.status)))
        try:
            cold.open(f"/?q={QUERY.replace(' ', '+')}&section=education")
            cold.wait_status("Results 1–3")
            assert cold.page.input_value("select[data-field=section]") == "education"
            # whether the load beat the first request or not, every 503 was followed by a 200
            assert statuses[-1][1] == 200
            for path in ("/info", "/search"):
                codes = [code for url, code in statuses if url.startswith(path)]
                assert codes and codes[-1] == 200 and set(codes) <= {200, 503}, statuses
            cold.check_clean(allow_http_errors=True)
        finally:
            cold.close()


def test_docs_pages_render_with_local_assets_under_their_csp(browser, server):
    """Issue 16 item 8: Swagger UI comes from the app, and its CSP lets it run."""
    for path, rendered in (("/docs", ".opblock"), ("/redoc", ".opblock")):  # /redoc redirects to /docs
        w = Watched(browser, server, viewport={"width": 1100, "height": 900})
        try:
            w.page.goto(server + path)
            w.page.wait_for_selector(rendered)
            assert "/search" in w.page.content()
            w.check_clean()  # no console error (a CSP violation is one), nothing fetched off-host
        finally:
            w.close()

"""A real browser (Debian's chromium, driven by Playwright) clicks through the lesson on the
default model: load -> importance -> prune -> recover -> compare, with a screenshot per tab in
test-output/. Asserts what a visitor sees: a heatmap drawn, the parameter count dropped, three
generations shown."""

import re
import shutil
import socket

import pytest

from conftest import REPO

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUT = REPO / "test-output"
LONG = 600_000   # ms: CPU work on the real model


@pytest.fixture(scope="module")
def url(default_model):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    import app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app.demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, **app.launch_kwargs())
    yield f"http://127.0.0.1:{port}/"
    app.demo.close()


def test_lesson_in_the_browser(url):
    from playwright.sync_api import expect, sync_playwright

    OUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)

        def tab(name):
            page.get_by_role("tab", name=name).click()

        def shot(name):
            page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)

        # 1 Model
        page.get_by_role("button", name="Load model").click()
        expect(page.get_by_text(re.compile(r"^Loaded ")).first).to_be_visible(timeout=LONG)
        expect(page.locator("body")).to_contain_text("KV heads (grouped-query attention)")
        shot("1-model")
        # 2 Structure
        tab("2 · Structure")
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
        shot("2-structure")
        # 3 Importance
        tab("3 · Importance")
        page.get_by_role("button", name="Score groups").click()
        expect(page.get_by_text(re.compile(r"Scored [\d,]+ groups"))).to_be_visible(timeout=LONG)
        heatmaps = page.locator(".js-plotly-plot .heatmaplayer")
        expect(heatmaps.first).to_be_attached(timeout=60_000)
        assert heatmaps.count() >= 2                        # attention and MLP heatmaps drawn
        shot("3-importance")
        # 4 Prune (defaults: 20% of parameters)
        tab("4 · Prune")
        page.get_by_role("button", name="Prune", exact=True).click()
        expect(page.get_by_text(re.compile(r"Removed [\d.]+% of the parameters"))).to_be_visible(timeout=LONG)
        table = page.locator("#before-after")                # parameters row: about -20%
        expect(table).to_contain_text(re.compile(r"parameters\s*134,515,008\s*10\d,\d{3},\d{3}\s*-(19|20)\.\d%"))
        shot("4-prune")
        # 5 Recover: a few steps on the built-in text, then merge
        tab("5 · Recover")
        steps = page.get_by_label("number input for steps", exact=True)
        steps.fill("5")
        steps.press("Enter")
        page.get_by_label("data", exact=True).click()
        page.get_by_role("option", name="builtin", exact=True).click()
        page.get_by_role("button", name="Start recovery").click()
        expect(page.get_by_text(re.compile(r"Stopped after 5 steps"))).to_be_visible(timeout=LONG)
        page.get_by_role("button", name="Merge").click()
        expect(page.get_by_text(re.compile(r"^Merged"))).to_be_visible(timeout=LONG)
        shot("5-recover")
        # 6 Compare
        tab("6 · Compare")
        page.get_by_role("button", name="Generate").click()
        expect(page.get_by_text(re.compile(r"pruned \+ LoRA: [\d.]+ tokens/s"))).to_be_visible(timeout=LONG)
        boxes = [page.get_by_label(name, exact=True) for name in ("original", "pruned", "pruned + LoRA")]
        texts = [b.input_value() for b in boxes]
        assert all(len(t.strip()) > 0 and not t.startswith("(not available") for t in texts), texts
        shot("6-compare")
        browser.close()

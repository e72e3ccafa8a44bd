"""A real browser (Debian's chromium, driven by Playwright) clicks through the lesson on the
default model: load -> importance -> prune -> recover -> compare, with a screenshot per tab in
test-output/. Asserts what a visitor sees: the paper's equations rendered as math, a heatmap drawn,
the parameter count dropped, structured and unstructured side by side, three generations, every
model ticked on Evaluate, and no plot legend over a panel label (bounding boxes)."""

import json
import re
import shutil
import time

import pytest

from conftest import REPO, serve_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUT = REPO / "test-output"
LONG = 600_000   # ms: CPU work on the real model

# every visible plot: its legend's box must not cross a subplot title, an annotation or the
# Gradio label of its panel
OVERLAPS = """() => {
  const bad = [];
  const hit = (a, b) => !(a.right <= b.left || a.left >= b.right || a.bottom <= b.top || a.top >= b.bottom);
  for (const plot of document.querySelectorAll('.js-plotly-plot')) {
    const legend = plot.querySelector('.legend');
    if (!legend) continue;
    const box = legend.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    const block = plot.closest('.block');
    const labels = [...plot.querySelectorAll('.annotation-text, .gtitle')];
    if (block) labels.push(...block.querySelectorAll('[data-testid="block-label"], .block-label'));
    for (const el of labels) {
      const r = el.getBoundingClientRect();
      if (r.width > 0 && hit(r, box)) bad.push((el.textContent || '?').trim().slice(0, 50));
    }
  }
  return bad;
}"""


@pytest.fixture(scope="module")
def url(default_model):
    yield from serve_app()


def test_lesson_in_the_browser(url):
    """The default lesson, every button at its default, as a student clicks it; each step's time
    goes to test-output/lesson-timings.json (the README's table), and a reload keeps the work."""
    from playwright.sync_api import expect, sync_playwright

    OUT.mkdir(exist_ok=True)
    timings = {}
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
            overlapping = page.evaluate(OVERLAPS)
            assert not overlapping, f"{name}: legends over {overlapping}"

        def part(element_id, name):                # one view, for the README
            page.locator(f"#{element_id}").screenshot(path=str(OUT / f"{name}.png"))

        def step(name, button, done, timeout=LONG, **kw):
            start = time.perf_counter()
            page.get_by_role("button", name=button, **kw).click()
            expect(done).to_be_visible(timeout=timeout)
            timings[name] = round(time.perf_counter() - start, 1)

        # 1 Model
        step("load", "Load model", page.get_by_text(re.compile(r"^Loaded ")).first)
        expect(page.locator("body")).to_contain_text("KV heads (grouped-query attention)")
        shot("1-model")
        # 2 Structure
        start = time.perf_counter()
        tab("2 · Structure")
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
        timings["structure"] = round(time.perf_counter() - start, 1)
        expect(page.locator("#dependency-graph .js-plotly-plot")).to_be_visible(timeout=60_000)
        shot("2-structure")
        part("dependency-graph", "view-dependency-graph")
        # 3 Importance
        tab("3 · Importance")
        step("importance", "Score groups", page.get_by_text(re.compile(r"Scored [\d,]+ groups")))
        heatmaps = page.locator(".js-plotly-plot .heatmaplayer")
        expect(heatmaps.first).to_be_attached(timeout=60_000)
        assert heatmaps.count() >= 2                        # attention and MLP heatmaps drawn
        math = page.locator("#formulas .katex")              # KaTeX rendered the paper's equations
        expect(math.first).to_be_visible()
        assert math.count() >= 10
        assert "Eq. 3" in page.locator("body").inner_text()
        shot("3-importance")
        part("formulas", "view-formulas")
        # 4 Prune (defaults: 20% of parameters): preview, prune, contrast
        tab("4 · Prune")
        step("preview", "Preview", page.get_by_text(re.compile(r"Will remove .* of all parameters")))
        step("prune", "Prune", page.get_by_text(re.compile(r"Removed [\d.]+% of the parameters")), exact=True)
        table = page.locator("#before-after")                # parameters row: about -20%
        expect(table).to_contain_text(re.compile(r"parameters\s*134,515,008\s*10\d,\d{3},\d{3}\s*-(19|20)\.\d%"))
        shot("4-prune")
        step("contrast", "Contrast: unstructured magnitude pruning",
             page.get_by_text(re.compile(r"Unstructured L1 pruning zeroed")))
        contrast = page.locator("#contrast")                  # both results in one table
        expect(contrast).to_contain_text("side by side in this run")
        expect(contrast).to_contain_text(re.compile(r"unstructured 20%"))
        shot("4-prune-contrast")
        part("contrast", "view-contrast")
        part("prune-mlp-map", "view-sorted-importance")       # the plan's cut on the sorted view
        # 5 Recover: the quick preset as it is, then merge
        tab("5 · Recover")
        step("quick recovery", "Start recovery", page.get_by_text(re.compile(r"(Stopped after|Finished all) \d+ steps|^Recovered")))
        trained = re.search(r"(?:Stopped after|Finished all) \d+ steps \((\d+)s\)", page.locator("body").inner_text())
        if trained:      # the LoRA steps alone (the rest: the original writing its answers, set-up)
            timings["quick recovery: training"] = float(trained.group(1))
        step("merge", "Merge", page.get_by_text(re.compile(r"^Merged")))
        page.get_by_text("Measured: perplexity against recovery time").click()
        expect(page.locator("#recovery-curve .js-plotly-plot")).to_be_visible(timeout=60_000)
        shot("5-recover")
        part("recovery-curve", "view-recovery-curve")
        # a reload keeps the session (the visitor key lives in the browser)
        page.reload()
        expect(page.get_by_text(re.compile(r"Welcome back"))).to_be_visible(timeout=60_000)
        # 6 Compare
        tab("6 · Compare")
        step("compare", "Generate", page.get_by_text(re.compile(r"pruned \+ LoRA: [\d.]+ tokens/s \(range")))
        boxes = [page.get_by_label(name, exact=True) for name in ("original", "pruned", "pruned + LoRA")]
        texts = [b.input_value() for b in boxes]
        assert all(len(t.strip()) > 0 and not t.startswith("(not available") for t in texts), texts
        shot("6-compare")
        # 7 Evaluate (the default subset), 8 Export
        tab("7 · Evaluate")
        for name in ("original", "pruned", "pruned + LoRA"):         # every model of the session ticked
            expect(page.get_by_role("checkbox", name=name, exact=True)).to_be_checked()
        step("evaluate", "Evaluate", page.get_by_text(re.compile(r"^Evaluated \d+ model")), exact=True)
        shot("7-evaluate")
        part("eval-fig", "view-evaluate")
        tab("8 · Export")
        step("export", "Export", page.get_by_text(re.compile(r"Unzip and load")), exact=True)
        shot("8-export")
        browser.close()
    timings["total"] = round(sum(v for k, v in timings.items() if ":" not in k), 1)
    (OUT / "lesson-timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print("lesson timings (s):", timings)

"""A server killed mid-lesson and started again: the visitor reloads the page and finds the work
(rebuilt from the steps saved on disk, every panel redrawn). Real server process, real browser."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def start(port: int, env: dict, log) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise TimeoutError("the app did not start")


def reload_after_restart(page) -> None:
    """The visitor reloads the page. Gradio's page polls a lost server every 2 s and reloads
    itself once it answers, so the two navigations may race: the one that loses is aborted
    (net::ERR_ABORTED), and the page the other one loads is what the visitor sees."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        page.reload()
    except PlaywrightError as error:
        if "ERR_ABORTED" not in str(error) and "detached" not in str(error):
            raise
        page.wait_for_load_state("load")


def test_a_server_killed_mid_lesson_keeps_the_work(tmp_path, tiny_folder):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), PRUNING_STUDIO_WARM_START="0",
               PRUNING_STUDIO_STATE_DIR=str(tmp_path / "sessions"),
               PRUNING_STUDIO_EXPORT_DIR=str(tmp_path / "exports"), GRADIO_ANALYTICS_ENABLED="False")
    log = open(tmp_path / "server.log", "w")
    server = start(port, env, log)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_label("hub id or local folder").first.check()
            page.get_by_label("hub id or folder").fill(tiny_folder)
            page.get_by_role("button", name="Load model").click()
            expect(page.get_by_text(re.compile(r"^Loaded "))).to_be_visible(timeout=120_000)
            page.wait_for_timeout(1500)
            page.get_by_role("tab", name="4 · Prune").click()
            page.get_by_role("button", name="Prune", exact=True).click()
            expect(page.get_by_text(re.compile(r"Removed [\d.]+% of the parameters"))).to_be_visible(timeout=180_000)
            table = page.locator("#before-after").inner_text()
            params = re.search(r"parameters\s+([\d,]+)\s+([\d,]+)", table).groups()

            server.send_signal(signal.SIGKILL)          # mid-lesson, no goodbye
            server.wait(timeout=30)
            server = start(port, env, log)
            reload_after_restart(page)
            expect(page.get_by_text(re.compile(r"Restored after a server restart"))).to_be_visible(timeout=240_000)
            page.get_by_role("tab", name="4 · Prune").click()
            expect(page.locator("#before-after")).to_contain_text(re.compile(
                rf"parameters\s+{params[0]}\s+{params[1]}"), timeout=30_000)
            assert page.locator(".toast-body").count() == 0
            page.screenshot(path=str(REPO / "test-output" / "restart-restored.png"), full_page=True)
            browser.close()
    finally:
        server.kill()
        log.close()

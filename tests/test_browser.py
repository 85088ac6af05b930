"""A student's first steps, in a real browser: JupyterLab serves notebook 01, headless Chromium
runs all its cells in the smoke profile, the slider panel renders, and moving the G slider
redraws the puzzle. Needs Debian's `chromium` (`.ci/run` installs it); no browser download."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NOTEBOOK = "01_puzzle_construction.ipynb"
RUN_ALL_SECONDS = 240
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                       reason="needs Debian's chromium (apt-get install chromium); .ci/run "
                              "installs it, and under CI a missing browser is a failure"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke_copy_of_notebook_01(folder: Path) -> Path:
    """Notebook 01 with the smoke profile and its figures written under `folder`."""
    nb = json.loads((ROOT / "notebooks" / NOTEBOOK).read_text())
    params = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    params["source"] = [f"profile = \"smoke\"\noutput_dir = {str(folder / 'figures')!r}\n"
                        if line.startswith("profile =") else line
                        for line in params["source"] if not line.startswith("output_dir =")]
    path = folder / NOTEBOOK
    path.write_text(json.dumps(nb))
    return path


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on a free loopback port with a token; always stopped."""
    port, token = free_port(), secrets.token_hex(16)
    work = tmp_path / "lab"
    work.mkdir()
    smoke_copy_of_notebook_01(work)
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
         "--allow-root", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "jupyterlab.log").read_text()
                assert time.monotonic() < deadline, "JupyterLab did not start within 60 s"
                time.sleep(0.5)
        yield base, token, tmp_path
    finally:  # the server and the kernels it started
        stop(server, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            stop(server, signal.SIGKILL)
            server.wait()
        log.close()


def stop(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass  # already gone


def test_notebook_01_runs_in_jupyterlab_and_its_slider_redraws(jupyterlab):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is not installed: apt-get install chromium"
    base, token, folder = jupyterlab
    shots = folder / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                                   state="attached")
            page.screenshot(path=shots / "1_opened.png")

            page.click("li.lm-MenuBar-item:has-text('Run')")
            page.click("li.lm-Menu-item:has-text('Run All Cells')")
            last = page.locator(".jp-Notebook .jp-CodeCell").last
            deadline = time.monotonic() + RUN_ALL_SECONDS
            while "[*]" in page.inner_text(".jp-Notebook") or \
                    last.locator(".jp-InputPrompt").inner_text().strip() in ("[ ]:", ""):
                assert time.monotonic() < deadline, f"still running after {RUN_ALL_SECONDS} s"
                time.sleep(1)
            page.screenshot(path=shots / "2_ran_all.png", full_page=True)
            text = page.inner_text(".jp-Notebook")
            assert "Traceback" not in text, "a cell failed:\n" + text[-3000:]
            assert "Error displaying widget" not in text

            panel = page.locator(".widget-interact").first
            panel.scroll_into_view_if_needed()
            sliders = panel.locator(".widget-slider")
            assert sliders.count() == 2, "the G and K sliders did not render"
            figure = panel.locator(".jp-OutputArea-output img").first
            before = figure.get_attribute("src")
            readout = sliders.first.locator(".widget-readout")
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("5")
            page.keyboard.press("Enter")
            deadline = time.monotonic() + 60
            while figure.get_attribute("src") == before:
                assert time.monotonic() < deadline, "moving the G slider did not redraw"
                time.sleep(0.5)
            assert "G=5" in panel.inner_text() or readout.inner_text().strip() == "5"
            panel.screenshot(path=shots / "3_slider_moved.png")
        finally:
            browser.close()
            print(f"screenshots: {shots}")

"""A student's first steps, in a real browser: JupyterLab serves notebook 01, headless Chromium
runs all its cells in the smoke profile, the slider panel renders, and moving the G slider
redraws the puzzle. Needs Debian's `chromium` (`.ci/run` installs it); no browser download."""
from __future__ import annotations

import json
import os
import re
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
    settings = tmp_path / "lab-settings" / "@jupyterlab"
    (settings / "notebook-extension").mkdir(parents=True)  # every cell in the page, for the checks
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none"}')
    (settings / "apputils-extension").mkdir()  # no "get notified about news?" toast
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false"}')
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
         "--allow-root", "--LabApp.news_url=",
         f"--LabApp.user_settings_dir={tmp_path / 'lab-settings'}",
         f"--LabApp.workspaces_dir={tmp_path / 'lab-workspaces'}",
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


def wait_until(condition, seconds: float, what: str, page, shots: Path) -> None:
    """Poll `condition` for up to `seconds`; on time-out fail with a screenshot and the end
    of the notebook's text."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            page.screenshot(path=shots / "timeout.png", full_page=True)
            pytest.fail(f"{what} within {seconds} s; screenshot {shots / 'timeout.png'}; the "
                        f"page ends with:\n" + page.inner_text("body")[-2000:])
        time.sleep(0.5)


def test_notebook_01_runs_in_jupyterlab_and_its_slider_redraws(jupyterlab):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is not installed: apt-get install chromium"
    base, token, folder = jupyterlab
    notebook = json.loads((folder / "lab" / NOTEBOOK).read_text())
    code_cells = sum(c["cell_type"] == "code" for c in notebook["cells"])
    shots = folder / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
            page.wait_for_function(  # the document is loaded, not JupyterLab's placeholder
                "n => document.querySelectorAll('.jp-Notebook .jp-CodeCell').length === n",
                arg=code_cells)
            wait_until(lambda: "| Idle" in page.inner_text("#jp-main-statusbar"), 120,
                       "the kernel did not start", page, shots)
            page.screenshot(path=shots / "1_opened.png")

            page.click("li.lm-MenuBar-item:has-text('Run')")
            page.click("li.lm-Menu-item:has-text('Run All Cells')")
            prompts = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt")
            wait_until(lambda: all(re.fullmatch(r"\[\d+\]:", p.strip())
                                   for p in prompts.all_inner_texts()),
                       RUN_ALL_SECONDS, "the cells did not all run", page, shots)
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
            wait_until(lambda: figure.get_attribute("src") != before, 60,
                       "moving the G slider did not redraw the figure", page, shots)
            assert readout.inner_text().strip() == "5"
            panel.screenshot(path=shots / "3_slider_moved.png")
        finally:
            browser.close()
            print(f"screenshots: {shots}")

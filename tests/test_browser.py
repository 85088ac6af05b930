"""A student's first steps, in a real browser: JupyterLab serves notebooks 01 and 03, headless
Chromium runs all their cells in the smoke profile; notebook 01's slider panel renders and
moving the G slider redraws the puzzle; notebook 03's game is played: a cell chosen for every
tile, "check" pressed, both scores read. Needs Debian's `chromium` (`.ci/run` installs it); no
browser download."""
from __future__ import annotations

import contextlib
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
GAME_NOTEBOOK = "03_attention_and_position_confusion.ipynb"
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


def smoke_copy(notebook: str, folder: Path) -> Path:
    """`notebook` with the smoke profile, its figures and runs under `folder`."""
    nb = json.loads((ROOT / "notebooks" / notebook).read_text())
    params = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    settings = (f"profile = \"smoke\"\noutput_dir = {str(folder / 'figures')!r}\n"
                f"runs_dir = {str(folder / 'runs')!r}\n")
    params["source"] = [settings if line.startswith("profile =") else line
                        for line in params["source"]
                        if not line.startswith(("output_dir =", "runs_dir ="))]
    path = folder / notebook
    path.write_text(json.dumps(nb))
    return path


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on a free loopback port with a token; always stopped."""
    port, token = free_port(), secrets.token_hex(16)
    work = tmp_path / "lab"
    work.mkdir()
    for notebook in (NOTEBOOK, GAME_NOTEBOOK):
        smoke_copy(notebook, work)
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


def open_and_run_all(page, base: str, token: str, folder: Path, notebook: str,
                     shots: Path) -> None:
    """Open `notebook` in JupyterLab, run all its cells and check that none failed."""
    cells = json.loads((folder / "lab" / notebook).read_text())["cells"]
    code_cells = sum(c["cell_type"] == "code" for c in cells)
    page.goto(f"{base}/lab/tree/{notebook}?token={token}")
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


@contextlib.contextmanager
def notebook_ran_in_lab(jupyterlab, notebook: str):
    """`notebook` opened in JupyterLab in headless Chromium with every cell run: (page,
    screenshot folder); the browser closes after the test's steps, which print where the
    screenshots are."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is not installed: apt-get install chromium"
    base, token, folder = jupyterlab
    shots = folder / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            open_and_run_all(page, base, token, folder, notebook, shots)
            yield page, shots
        finally:
            browser.close()
            print(f"screenshots: {shots}")


def test_notebook_01_runs_in_jupyterlab_and_its_slider_redraws(jupyterlab):
    with notebook_ran_in_lab(jupyterlab, NOTEBOOK) as (page, shots):
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


def test_notebook_03_game_is_played_in_jupyterlab_and_scores_both_players(jupyterlab):
    with notebook_ran_in_lab(jupyterlab, GAME_NOTEBOOK) as (page, shots):
        panel = page.locator(".apl-game").first
        panel.scroll_into_view_if_needed()
        choices = panel.locator(".widget-dropdown select")
        tiles = choices.count()
        assert tiles == 16, f"the smoke profile's G = 4 puzzle shows 16 tiles, not {tiles}"
        board = panel.locator(".widget-image").nth(tiles)  # after the tiles: your board
        empty_board = board.get_attribute("src")
        for tile in range(tiles):  # a cell for every tile, each cell once
            row, col = divmod((tile * 5) % tiles, 4)
            choices.nth(tile).select_option(label=f"row {row + 1}, col {col + 1}")
        wait_until(lambda: board.get_attribute("src") != empty_board, 30,
                   "placing the tiles did not redraw your board", page, shots)
        panel.locator("button:has-text('check')").click()
        score = panel.locator(".apl-game-score")
        wait_until(lambda: score.count() == 1, 30, "check showed no score", page, shots)
        found = re.fullmatch(r"you: (\d+)/16 right, the model: (\d+)/16 right",
                             score.inner_text().strip())
        assert found, score.inner_text()
        student, model = map(int, found.groups())
        assert f"after 1 puzzle(s): you {student}/16 tiles right, the model {model}/16" in \
            panel.inner_text()
        panel.screenshot(path=shots / "3_game_checked.png")


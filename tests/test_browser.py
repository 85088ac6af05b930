"""In a real browser, headless Chromium driven by Playwright (Debian's `chromium`, which
`.ci/run` installs; no browser download):

- the course site that `make run` builds, opened from file:// with every other request refused:
  every notebook page shows its figures and typeset math, and its Colab and Kaggle links; search
  finds PatchDropout; next and previous lead through the notebooks in order;
- a student's first steps: JupyterLab serves notebooks 01 and 03 and runs all their cells in the
  smoke profile; notebook 01's slider panel renders and moving the G slider redraws the puzzle;
  notebook 03's game is played: a cell chosen for every tile, "check" pressed, both scores read.
"""
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

from apl_core.publish import notebook_links
from apl_core.setup_cell import KERNELSPEC

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
    kernels = tmp_path / "jupyter" / "kernels"  # the apl-course kernel, as make setup registers it
    (kernels / KERNELSPEC["name"]).mkdir(parents=True)
    (kernels / KERNELSPEC["name"] / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNELSPEC["display_name"], "language": KERNELSPEC["language"]}))
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
         "--allow-root", "--LabApp.news_url=",
         f"--LabApp.user_settings_dir={tmp_path / 'lab-settings'}",
         f"--LabApp.workspaces_dir={tmp_path / 'lab-workspaces'}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_PATH": str(tmp_path / "jupyter")})
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



# ---------------------------------------------------------------- the course site, offline

COURSE = sorted(path.stem for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SCREENSHOT = ROOT / "docs" / "figures" / "site_notebook_page.png"  # the README shows it


@pytest.fixture(scope="module")
def offline_site(smoke_course):
    """The site that the smoke course's run built, in headless Chromium where every request
    that is not file:// is refused: (site folder, page, refused URLs, page errors)."""
    from playwright.sync_api import sync_playwright

    out, _ = smoke_course
    site = out / "site"
    assert (site / "index.html").is_file(), "the course run built no site"
    refused, errors = [], []

    def refuse_the_network(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.route("**/*", refuse_the_network)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        try:
            yield site, page, refused, errors
        finally:
            browser.close()


def open_page(page, path: Path) -> None:
    """Open a page of the site and wait until MathJax has typeset it (where it has math)."""
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    page.wait_for_function("() => !window.MathJax || (MathJax.startup && MathJax.startup.promise)")
    page.evaluate("() => window.MathJax ? MathJax.startup.promise.then(() => true) : true")


def article_prose(page) -> str:
    """The text of the page's article without its code, its outputs' plain text and the
    typeset math: what is left of a formula there was not typeset."""
    return page.evaluate("""() => {
        const article = document.querySelector("article").cloneNode(true);
        article.querySelectorAll("pre, code, mjx-container").forEach(e => e.remove());
        return article.textContent;
    }""")


def markdown_has_math(notebook: Path) -> bool:
    cells = json.loads(notebook.read_text())["cells"]
    return any(c["cell_type"] == "markdown" and "$" in "".join(c["source"]) for c in cells)


def image_outputs(notebook: Path) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum("image/png" in output.get("data", {}) for cell in cells
               for output in cell.get("outputs", []))


@pytest.mark.slow
@pytest.mark.parametrize("name", COURSE)
def test_every_notebook_page_shows_its_figures_math_and_launch_links_offline(offline_site,
                                                                            smoke_course, name):
    site, page, refused, errors = offline_site
    executed = smoke_course[0] / f"{name}.ipynb"
    open_page(page, site / "notebooks" / f"{name}.html")
    assert page.locator("article img").count() >= image_outputs(executed)
    assert page.evaluate("""() => [...document.querySelectorAll("article img")]
                            .every(img => img.complete && img.naturalWidth > 0)"""), \
        "a figure did not load"
    if markdown_has_math(executed):
        assert page.locator("article mjx-container").count() > 0, "no math was typeset"
    raw_tex = re.findall(r"\$[^$\s][^$]*\$|\\\(.{0,30}|\\\[.{0,30}", article_prose(page))
    assert not raw_tex, f"formulas left as TeX: {raw_tex[:3]}"
    links = page.locator("article a.apl-launch")
    assert {links.nth(i).inner_text(): links.nth(i).get_attribute("href")
            for i in range(links.count())} == \
        {f"Open in {service}": url for service, url in notebook_links(name).items()}
    assert not refused, f"the page asked the network for {refused}"
    assert not errors, errors
    if name == COURSE[0]:
        page.screenshot(path=SCREENSHOT)


@pytest.mark.slow
def test_next_and_previous_lead_through_the_notebooks_in_order(offline_site):
    site, page, refused, _ = offline_site
    open_page(page, site / "notebooks" / f"{COURSE[0]}.html")
    visited = [COURSE[0]]
    for _ in COURSE[1:]:
        page.click("a.right-next")
        page.wait_for_load_state("load")
        visited.append(Path(page.url).stem)
    assert visited == COURSE
    for _ in COURSE[1:]:
        page.click("a.left-prev")
        page.wait_for_load_state("load")
        visited.append(Path(page.url).stem)
    assert visited[len(COURSE) - 1:] == COURSE[::-1]
    page.click("a.left-prev")  # before the first notebook: the front page, the README
    assert Path(page.url).name == "index.html" and "apl-course" in page.title()
    assert not refused


@pytest.mark.slow
def test_search_finds_patchdropout_offline(offline_site):
    site, page, refused, errors = offline_site
    page.goto(f"{(site / 'search.html').as_uri()}?q=PatchDropout")
    results = page.locator("#search-results ul.search li a")
    results.first.wait_for()
    found = {Path(results.nth(i).get_attribute("href").split("?")[0].split("#")[0]).stem
             for i in range(results.count())}
    assert "02_pretraining" in found, found
    assert not refused and not errors, (refused, errors)


@pytest.mark.slow
def test_the_front_page_is_the_readme_with_its_figures_and_every_chapter(offline_site):
    site, page, refused, _ = offline_site
    open_page(page, site / "index.html")
    readme_title = (ROOT / "README.md").read_text().splitlines()[0].removeprefix("# ")
    assert page.locator("article h1").first.inner_text().strip().startswith(
        readme_title.split(":")[0])
    assert page.evaluate("""() => [...document.querySelectorAll("article img")]
                            .every(img => img.complete && img.naturalWidth > 0)""")
    sidebar = page.locator("nav.bd-links").inner_text().replace("\u2019", "'")  # smart quotes
    for name in COURSE:
        title = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"][0]
        assert "".join(title["source"]).splitlines()[0].removeprefix("# ") in sidebar
    for chapter in (ROOT / "docs").glob("*.md"):
        assert chapter.read_text().splitlines()[0].removeprefix("# ") in sidebar
    assert not refused

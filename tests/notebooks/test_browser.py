"""The notebooks as a person runs them: JupyterLab started here (127.0.0.1, a free port, a token, its own runtime,
config, settings and IPython folders under the test's folder), Debian's chromium driven through Playwright
(`demos.browser.chromium_page`), Run > Run All Cells from the menu, on the quick world.

00_anatomy and 04_gemma2 draw no figure through pyplot, so matplotlib's inline backend never activates in them: they
are the notebooks whose figures showed as `<Figure size ...>` text (issue 27). Screenshots go to the test's folder.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from demos.browser import CHROMIUM, chromium_page, distinct_glyphs
from tests.notebooks.test_structure import PLOTS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed (scripts/setup.sh)"),
]

REPO = Path(__file__).parents[2]
NOTEBOOKS = REPO / "notebooks"
RUN_ALL_MS = 900_000  # a whole notebook on the quick world, 2 busy CPU cores
# JupyterLab settings for a test: every cell in the page (no windowing, which leaves cells out of view unrendered)
# and no news or update check (no network here, no pop-up over the menus)
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"checkForUpdates": False, "fetchNews": "false"},
}


@dataclass(frozen=True)
class Lab:
    url: str
    token: str
    root: Path  # the folder it serves: copies of the notebooks, so that saving never touches the repository's

    def open(self, page, notebook: str) -> None:
        """Open `notebook` in a fresh workspace and wait until its kernel is connected and idle (the status bar's
        "Python 3 (ipykernel) | Idle"; the toolbar's indicator says idle before there is a kernel, and Run All
        then runs nothing)."""
        page.goto(f"{self.url}/lab/tree/{notebook}.ipynb?reset&token={self.token}")
        page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\(ipykernel\) \| Idle")).wait_for()

    def shut_down_kernels(self) -> None:
        for session in self._api("GET", "sessions"):
            self._api("DELETE", f"sessions/{session['id']}")

    def _api(self, method: str, path: str):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(quick_world, tmp_path_factory) -> Iterator[Lab]:
    """JupyterLab over copies of the notebooks, on the session's quick world (`runs/quick` links to it; the
    notebooks' own runs go beside it), stopped at the end."""
    home = tmp_path_factory.mktemp("lab")
    root, runs = home / "notebooks", home / "runs"
    root.mkdir()
    for path in NOTEBOOKS.glob("*.ipynb"):  # without their committed outputs: what the page shows comes from here
        notebook = json.loads(path.read_text())
        notebook["metadata"].pop("widgets", None)
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
        (root / path.name).write_text(json.dumps(notebook, indent=1, ensure_ascii=False))
    runs.mkdir()
    (runs / "quick").symlink_to(quick_world, target_is_directory=True)
    for name, settings in SETTINGS.items():
        (home / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (home / "settings" / name).write_text(json.dumps(settings))

    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "MPLBACKEND", "IPYTHON"))}
    env.update(
        FUNASR_SWAP_WORLD="quick", FUNASR_SWAP_RUNS=str(runs), HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])]),  # this checkout's code
        JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        IPYTHONDIR=str(home / "ipython"),  # no profile of this machine's user (a startup file importing pyplot...)
    )  # fmt: skip
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False", "--ServerApp.allow_root=True",  # CI containers run as root
    ]  # fmt: skip
    log = (home / "server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    found = Lab(f"http://127.0.0.1:{port}", token, root)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {server.returncode}: see {home / 'server.log'}")
            try:
                found._api("GET", "status")
                break
            except OSError as error:
                if time.monotonic() > deadline:
                    log = home / "server.log"
                    raise TimeoutError(f"jupyter lab not answering on port {port}: see {log}") from error
                time.sleep(0.5)
        yield found
    finally:
        try:
            found._api("POST", "shutdown")  # stops its kernels too
            server.wait(timeout=30)
        except Exception:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.close()


# ----------------------------------------------------------------------------------------------------------------
# What a person does and sees


def run_menu(page, command: str) -> None:
    """Run > the item of JupyterLab command `command` (`runmenu:run-all` is Run All Cells, ...), from the menu bar."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(f".lm-Menu-item[data-command='{command}']").click()


def cells(page):
    return page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell")


def prompts(page) -> list[str]:
    """Each code cell's execution prompt as shown: "[3]:", "[*]:" while it runs, "[ ]:" before."""
    return page.locator(".jp-NotebookPanel:visible .jp-CodeCell .jp-InputArea-prompt").all_inner_texts()


def wait_until_run(page, after: int = 0, first: int = 0) -> None:
    """Wait until every code cell from the `first`-th on shows an execution count above `after` (none queued or
    running)."""
    page.wait_for_function(
        """([after, first]) => {
            const shown = [...document.querySelectorAll(".jp-NotebookPanel .jp-CodeCell .jp-InputArea-prompt")];
            return shown.length > first && shown.slice(first).every(p => {
                const count = /\\[(\\d+)\\]/.exec(p.textContent);
                return count && Number(count[1]) > after;
            });
        }""",
        arg=[after, first],
        timeout=RUN_ALL_MS,
    )


def last_count(page) -> int:
    """The highest execution count the notebook shows."""
    return max(int(m.group(1)) for p in prompts(page) if (m := re.search(r"\[(\d+)\]", p)))


def errors(page) -> list[str]:
    """The text of every output that is an error: a traceback on stderr or an error output."""
    found = page.locator("[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
    return [t for t in found if "Traceback" in t or re.search(r"^\w*(Error|Exception)\b", t, re.M)]


def figure_cells(notebook: str) -> list[int]:
    """The cells of `notebook` that draw (numbered as JupyterLab lays them out, markdown too)."""
    numbered = enumerate(json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())["cells"])
    return [i for i, c in numbered if c["cell_type"] == "code" and PLOTS.search("".join(c["source"]))]


def code_index(notebook: str, cell: int) -> int:
    """Which code cell (counting code cells only) the notebook's `cell` is."""
    return [c["cell_type"] for c in json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())["cells"][:cell]].count(
        "code"
    )


def images(cell) -> list[str]:
    """The `src` of each image the cell's outputs show, once drawn (a PNG figure: a data URL or a blob)."""
    return cell.locator(".jp-OutputArea-output img").evaluate_all(
        "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).map(i => i.src)"
    )


def assert_figures_are_images(page, notebook: str) -> None:
    for index in figure_cells(notebook):
        cell = cells(page).nth(index)
        assert images(cell), f"{notebook} cell {index} shows no image: {cell.inner_text()[-300:]!r}"
        assert "<Figure size" not in cell.locator(".jp-OutputArea").inner_text()


def cell_with(page, text: str):
    """The one code cell whose source holds `text`."""
    return page.locator(".jp-NotebookPanel:visible .jp-CodeCell", has=page.locator(".jp-InputArea", has_text=text))


# ----------------------------------------------------------------------------------------------------------------


def test_00_anatomy_runs_in_jupyterlab_with_its_figure_widget_and_prompt_view(lab, tmp_path):
    started = time.monotonic()
    with chromium_page(width=1400, height=1400) as page:
        lab.open(page, "00_anatomy")
        run_menu(page, "runmenu:run-all")
        wait_until_run(page)
        page.screenshot(path=tmp_path / "00_anatomy.png")
        assert errors(page) == []
        assert_figures_are_images(page, "00_anatomy")

        # the clip dropdown is a live widget: pick another clip, run the cells below it, and they follow
        dropdown = page.locator(".jp-OutputArea-output .widget-dropdown select")
        dropdown.wait_for()
        options = dropdown.locator("option").evaluate_all("options => options.map(o => o.value)")  # the clips' texts
        first, other = options[0], options[-1]
        assert len(options) > 1 and dropdown.input_value() == first
        figure = cells(page).nth(figure_cells("00_anatomy")[0])
        prompt_view = cell_with(page, "prompt_html(tokens)")
        transcript = cell_with(page, "result = transcribe(")
        before = images(figure), prompt_view.locator(".jp-OutputArea").inner_text()
        assert first in figure.inner_text() and first in transcript.inner_text()
        dropdown.select_option(other)
        figure.locator(".jp-InputPrompt").click()  # select the cell that reads the dropdown
        last = last_count(page)
        run_menu(page, "notebook:run-all-below")
        wait_until_run(page, after=last, first=code_index("00_anatomy", figure_cells("00_anatomy")[0]))
        assert errors(page) == []
        assert other in figure.inner_text() and other in transcript.inner_text()
        assert images(figure) and images(figure) != before[0]  # a new drawing, of the other clip
        assert prompt_view.locator(".jp-OutputArea").inner_text() != before[1]

        # the prompt as coloured tokens (HTML), its role markers and the audio slot among them, Chinese drawn
        view = prompt_view.locator(".jp-RenderedHTML")
        assert view.locator("span[title^='audio ']").count() > 0
        assert view.locator("span[title^='system ']").count() > 0
        user = "".join(view.locator("span[title^='user ']").all_inner_texts())
        chinese = "".join(re.findall(r"[\u4e00-\u9fff]", user))
        assert chinese, f"no Chinese in the user turn: {user!r}"
        assert distinct_glyphs(page, ".jp-NotebookPanel:visible .jp-RenderedHTML span[title^='user ']", chinese) \
            == len(set(chinese)), "Chinese drawn as boxes: install fonts-noto-cjk (scripts/setup.sh)"  # fmt: skip
        figure.screenshot(path=tmp_path / "00_anatomy-figure.png")
        prompt_view.screenshot(path=tmp_path / "00_anatomy-prompt.png")
    lab.shut_down_kernels()
    print(f"00_anatomy in the browser: {time.monotonic() - started:.0f} s; screenshots in {tmp_path}")


def test_04_gemma2_runs_in_jupyterlab_with_its_live_training_plot(lab, tmp_path):
    started = time.monotonic()
    with chromium_page(width=1400, height=1400) as page:
        lab.open(page, "04_gemma2")
        run_menu(page, "runmenu:run-all")
        plot = cell_with(page, "plot = LiveTrainingPlot(")
        # while it trains, the curves are an image: seen before the cell's prompt turns from [*] to its count
        seen = page.wait_for_function(
            """() => {
                const cell = [...document.querySelectorAll(".jp-NotebookPanel .jp-CodeCell")]
                    .find(c => c.querySelector(".jp-InputArea").textContent.includes("plot = LiveTrainingPlot("));
                const prompt = cell.querySelector(".jp-InputArea-prompt").textContent;
                const drawn = [...cell.querySelectorAll(".jp-OutputArea-output img")].some(i => i.naturalWidth > 0);
                if (/\\[\\d+\\]/.test(prompt)) return "finished first";
                return prompt.includes("*") && drawn ? "drawn while training" : false;
            }""",
            timeout=RUN_ALL_MS,
        ).json_value()
        assert seen == "drawn while training"
        plot.screenshot(path=tmp_path / "04_gemma2-training.png")
        wait_until_run(page)
        page.screenshot(path=tmp_path / "04_gemma2.png")
        assert errors(page) == []
        assert_figures_are_images(page, "04_gemma2")  # the soft-capping figure and the plot after training
        assert len(images(plot)) == 1  # redrawn in place, not appended
        assert cell_with(page, "prompt_html(").locator(".jp-RenderedHTML span[title^='audio ']").count() > 0
        plot.screenshot(path=tmp_path / "04_gemma2-plot.png")
    lab.shut_down_kernels()
    print(f"04_gemma2 in the browser: {time.monotonic() - started:.0f} s; screenshots in {tmp_path}")

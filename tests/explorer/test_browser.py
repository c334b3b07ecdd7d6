"""End to end in real headless Chromium: launch runs from the UI, watch, cancel, compare.

Starts `streamlit run explorer -- --runs-dir <tmp>` and drives it with
Playwright. By default the runs are real `python -m tlkit.train` smoke runs
(tiny backbone, ~20 s each on 2 CPU cores) when the Fashion-MNIST files are
found (`$TLKIT_TEST_DATA_DIR`, or `data/fashion-mnist` in `$TLKIT_SHARED_DIR`,
default `../shared` next to the repo); otherwise, or with `TLKIT_EXPLORER_E2E_TRAINER=fake`, the queue runs
`tests/explorer/fake_trainer.py` (as a script). Screenshots of the main views go to `$TLKIT_SCREENSHOTS`
(`docs/img/` for the docs).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from explorer import launcher, offline, ui, worker
from tlkit import runs

from ..helpers import REPO, wait_until
from .explorer_fixtures import FAKE_TRAINER_CMD

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Screenshots for the docs are refreshed with TLKIT_SCREENSHOTS=docs/img; otherwise they go to a
# temp dir so a test run leaves the working tree clean.
IMG_DIR = Path(os.environ.get("TLKIT_SCREENSHOTS") or tempfile.mkdtemp(prefix="tlkit-screens-"))
RUN_TIMEOUT_MS = 150_000  # one real smoke run: ~20 s here; generous for slow CI machines


def find_data_dir() -> Path | None:
    shared = Path(os.environ.get("TLKIT_SHARED_DIR", REPO.parent / "shared"))  # as tests/conftest.py
    candidates = [os.environ.get("TLKIT_TEST_DATA_DIR"), shared / "data" / "fashion-mnist"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "t10k-labels-idx1-ubyte.gz").exists():
            return Path(candidate)
    return None


def trainer_mode() -> str:
    mode = os.environ.get("TLKIT_EXPLORER_E2E_TRAINER", "auto")
    if mode in ("real", "fake"):
        return mode
    return "real" if find_data_dir() is not None else "fake"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "streamlit exited early"
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("streamlit did not become healthy")


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing (required on CI)")
        pytest.skip(f"{CHROMIUM} is missing; install Debian's chromium to run the browser test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def explorer(tmp_path_factory, chromium):
    """A running explorer on a free port over an empty runs dir; cleans up workers and trainers."""
    runs_dir = tmp_path_factory.mktemp("e2e") / "runs"
    mode = trainer_mode()
    env = {key: value for key, value in os.environ.items() if key != worker.TRAIN_CMD_ENV}
    env.update(KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"), PYTHONUNBUFFERED="1")
    if mode == "fake":
        env[worker.TRAIN_CMD_ENV] = shlex.join(FAKE_TRAINER_CMD)
        env["FAKE_TRAINER_EPOCH_SECONDS"] = "1"
    elif find_data_dir() != offline.find_data_dir("fashion_mnist"):
        env[offline.DATA_DIR_ENV] = str(find_data_dir())  # the copy is elsewhere; tell the explorer
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(runs_dir.parent / "streamlit.log", "wb")
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "explorer", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--", "--runs-dir", str(runs_dir)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, server)
        timings = {"server start (to healthy)": time.monotonic() - started}
        yield {"url": url, "runs_dir": runs_dir, "mode": mode, "timings": timings}
    finally:
        for run in runs.list_runs(runs_dir):
            if run.status().get("state") in ("queued", "running"):
                launcher.cancel_run(run)
        for pid in worker.active_workers(runs_dir) if runs_dir.exists() else []:
            if pid:
                os.kill(pid, signal.SIGTERM)
        server.terminate()
        server.wait(timeout=20)
        log.close()


@pytest.fixture
def page(chromium, explorer):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    explorer["timings"]["first page (first visit)"] = first_page_seconds(page, lambda: page.goto(explorer["url"]))
    yield page
    context.close()


def first_page_seconds(page, navigate) -> float:
    """Seconds from navigating to the Launch page being drawn (its title and the sidebar's strip)."""
    start = time.monotonic()
    navigate()
    page.get_by_text("Launch an experiment").wait_for(timeout=90_000)
    page.get_by_text("Queue:").first.wait_for(timeout=90_000)
    page.get_by_role("button", name="Launch").wait_for(timeout=90_000)
    return time.monotonic() - start


def report(timings: dict[str, float], capsys) -> None:
    """Prints the measured times (not asserted beyond a sanity bound: machines are noisy)."""
    with capsys.disabled():
        print("\nexplorer timings: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items()))
    assert all(seconds < 30 for seconds in timings.values()), timings


def shot(page, name: str, height: int | None = None) -> None:
    """Saves a screenshot for the docs (a taller viewport shows the whole page)."""
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    if height:
        page.set_viewport_size({"width": 1400, "height": height})
        page.locator('[data-testid="stMain"]').evaluate("main => main.scrollTo(0, 0)")
        page.wait_for_timeout(700)
    page.screenshot(path=str(IMG_DIR / name))
    if height:
        page.set_viewport_size({"width": 1400, "height": 1000})


def fill(page, label: str, value: str, nth: int = 0) -> None:
    box = page.locator(f'input[aria-label="{label}"]').nth(nth)
    box.fill(value)
    box.press("Enter")
    page.wait_for_timeout(600)  # let the rerun land before the next interaction


def expand(page, caption_text: str) -> None:
    page.locator("summary", has_text=caption_text).click()


def new_run_ids(runs_dir: Path, known: set[str]) -> list[str]:
    return sorted(run.run_id for run in runs.list_runs(runs_dir) if run.run_id not in known)


def launch(page, runs_dir: Path, name: str) -> runs.Run:
    known = {run.run_id for run in runs.list_runs(runs_dir)}
    fill(page, "Name", name)
    page.get_by_role("button", name="Launch").click()
    page.get_by_text("Queued 1 run").wait_for()
    (run_id,) = new_run_ids(runs_dir, known)
    return runs.Run(runs_dir / run_id)


def has_value(page, label: str, value: str, nth: int = 0) -> bool:
    """Whether the input shows `value` within a few seconds (a fresh page fills its widgets late)."""
    box = page.locator(f'input[aria-label="{label}"]').nth(nth)
    return wait_until(lambda: box.input_value() == value, timeout=15, interval=0.25)


def svg_texts(locator) -> list[str]:
    return locator.evaluate_all("nodes => nodes.map(node => node.textContent)")


def card(page, run: runs.Run):
    """The run's card in the sidebar's live strip (finished runs sit in the "Finished" expander)."""
    return page.locator(f'[data-testid="stSidebar"] .st-key-{ui.card_key(run.run_id)}')


def open_finished(page) -> None:
    """Unfolds the live strip's finished runs (once; it stays open across refreshes)."""
    finished = page.locator('[data-testid="stSidebar"] .st-key-finished details')
    finished.wait_for()
    if finished.get_attribute("open") is None:
        finished.locator("summary").click()
    assert wait_until(lambda: finished.get_attribute("open") is not None, timeout=10, interval=0.2)


def test_launch_watch_cancel_and_compare(page, explorer, capsys):
    runs_dir, mode = explorer["runs_dir"], explorer["mode"]
    print(f"browser test trainer: {mode}")

    # ---- The first launch works: the data dir is the detected copy, or a download is announced ----
    data_box, warning = page.locator('input[aria-label="Data dir"]'), page.get_by_text("will be downloaded through")
    assert wait_until(lambda: data_box.input_value() or warning.count(), timeout=20, interval=0.25)
    data_dir, warned = data_box.input_value(), warning.count() > 0
    detected = offline.find_data_dir("fashion_mnist")
    if mode == "real":
        assert data_dir and Path(data_dir).resolve() == find_data_dir().resolve() and not warned
    else:
        assert (data_dir and not warned) or (not data_dir and warned and detected is None)

    page.get_by_text("Nothing queued or running").wait_for()

    # ---- An out-of-range value is named next to its field and blocks Launch ----
    fill(page, "Train limit", "5")
    page.get_by_text("Data › Train limit: 5 is outside the allowed range [20, inf]").wait_for()
    # Streamlit redraws top to bottom: the message can show while the button below is still the old one.
    launch_button = page.get_by_role("button", name="Launch")
    assert wait_until(launch_button.is_disabled, timeout=10, interval=0.2)
    assert has_value(page, "Train limit", "5")  # kept, not silently reverted
    fill(page, "Train limit", "1000")
    page.get_by_text("outside the allowed range").wait_for(state="detached")
    assert wait_until(launch_button.is_enabled, timeout=10, interval=0.2)

    # ---- Launch: two smoke runs queue behind each other, newest first in the live strip ----
    first = launch(page, runs_dir, "e2e-a")
    fill(page, "Head units", "128")  # the second run differs in one field
    second = launch(page, runs_dir, "e2e-b")
    strip = page.locator('[data-testid="stSidebar"] [class*="st-key-card-"]')
    page.get_by_text("waiting for the queue worker").wait_for()
    shot(page, "launch.png", height=2500)

    # ---- A reload rebuilds the same strip and the form from the runs dir ----
    explorer["timings"]["page after a reload"] = first_page_seconds(page, page.reload)
    card(page, second).wait_for()
    assert has_value(page, "Head units", "128") and has_value(page, "Name", "e2e-b")
    live = [key for key in strip.evaluate_all("nodes => nodes.map(n => n.className)")]
    order = [run.run_id for run in (second, first) if any(ui.card_key(run.run_id) in k for k in live)]
    assert order and order[0] == second.run_id  # newest first (the first may have finished already)
    other_tab = page.context.new_page()  # a second tab shows the same strip
    other_tab.goto(explorer["url"])
    card(other_tab, second).wait_for(timeout=60_000)
    other_tab.close()

    page.get_by_text("Finished · 2").wait_for(timeout=RUN_TIMEOUT_MS)
    open_finished(page)
    card(page, first).get_by_text("test accuracy").wait_for()
    card(page, second).get_by_text("test accuracy").wait_for()
    for run in (first, second):
        status = run.status()
        assert status["state"] == "completed", run.log_tail()
        assert status["backend"] == os.environ.get("KERAS_BACKEND", "jax")
        assert len(run.history()) == 2 and run.metrics()["confusion_matrix"]
    assert first.config()["data"]["data_dir"] == (data_dir or None)  # the detected copy, used as is

    # ---- Cancel a running run ----
    # Fine-tuning for 200 epochs: long enough to cancel mid-stage. (Not the head stage: it trains on
    # the features the first two runs cached, 30 epochs in a few seconds, often over before a redraw.)
    fill(page, "Epochs", "200", nth=1)
    third = launch(page, runs_dir, "e2e-cancel")
    card(page, third).get_by_text("stage finetune").wait_for(timeout=RUN_TIMEOUT_MS)
    card(page, third).get_by_role("button", name="Cancel").click()
    status = runs.wait_for(third, timeout=60)
    assert status["state"] == "cancelled", third.log_tail()
    open_finished(page)
    card(page, third).get_by_text("history is kept").wait_for()

    # ---- Compare: curves of the two completed runs ----
    page.get_by_role("link", name="Compare").click()
    page.get_by_text("Compare runs").wait_for()
    curves = page.locator('[data-testid="stPlotlyChart"]').first
    curves.locator(".main-svg").first.wait_for()
    assert "head → finetune" in svg_texts(curves.locator(".annotation-text"))
    legend = svg_texts(curves.locator(".legendtext"))
    assert {"e2e-a · train", "e2e-a · val", "e2e-b · train", "e2e-b · val"} <= set(legend)
    page.wait_for_timeout(800)
    shot(page, "compare_curves.png")

    # ---- Confusion matrices, and a click on a cell filters the gallery ----
    page.get_by_role("tab", name="Confusion").click()
    matrix_chart = page.locator('[data-testid="stPlotlyChart"]', has_text="e2e-a · acc")
    matrix_chart.locator(".main-svg").first.wait_for()
    metrics = first.metrics()
    names = metrics["class_names"]
    assert {"Ankle boot", "Trouser"} <= set(svg_texts(matrix_chart.locator(".xtick text")))
    page.wait_for_timeout(800)
    shot(page, "confusion.png", height=1250)

    matrix = metrics["confusion_matrix"]
    off_diagonal = [(i, j) for i in range(10) for j in range(10) if i != j]
    true, pred = max(off_diagonal, key=lambda cell: matrix[cell[0]][cell[1]])
    matrix_chart.locator("path.point").nth(true * 10 + pred).click(force=True)
    expected = f"{names[true]} → {names[pred]}"
    captions = page.locator('[data-testid="stImageCaption"]')
    # The rerun replaces the gallery; wait until only the clicked cell's images are left.
    def only_clicked_cell() -> bool:
        texts = captions.all_inner_texts()
        return bool(texts) and all(text.startswith(expected) for text in texts)

    assert wait_until(only_clicked_cell, timeout=20, interval=0.25), captions.all_inner_texts()[:5]
    captions = captions.all_inner_texts()
    assert len(captions) == min(matrix[true][pred], 48)
    page.get_by_text("Misclassified test images", exact=True).scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    shot(page, "gallery.png")

    page.get_by_role("tab", name="Per class").click()
    page.locator('[data-testid="stPlotlyChart"]', has_text="Precision").locator(".main-svg").first.wait_for()
    page.wait_for_timeout(800)
    shot(page, "per_class.png")
    page.get_by_role("tab", name="Hyperparameters").click()
    parallel = page.locator(".js-plotly-plot .parcoords").first
    parallel.wait_for()
    assert "head units" in svg_texts(page.locator(".js-plotly-plot .parcoords text"))
    page.wait_for_timeout(800)
    shot(page, "hyperparameters.png")

    # ---- Runs table: all three runs, the cancelled one included; the best run marked ----
    page.get_by_role("link", name="Runs").click()
    page.get_by_text("Run details").wait_for()
    grid = page.locator('[data-testid="stDataFrame"]')
    grid.wait_for()
    page.get_by_text("3 of 3 runs").wait_for()
    page.get_by_text("★ best test acc:").wait_for()

    # ---- Run details of the newest run (the cancelled one): its log, a title, clone into the form ----
    assert page.get_by_role("combobox", name="Run").first.is_visible()
    page.locator('[data-testid="stCode"]').first.wait_for()  # the Log tab, open by default
    page.get_by_role("tab", name="Title, tags & notes").click()
    fill(page, "Title", "cancelled on purpose")  # Enter submits the annotation form
    page.get_by_text("Saved the title, tags and notes").wait_for()
    assert third.annotations()["title"] == "cancelled on purpose"  # shown in the strip: see the AppTest tests
    # The run picker shows the new title at once (Streamlit alone would keep drawing the old label).
    picker = page.get_by_role("combobox", name="Run").first
    assert wait_until(lambda: picker.input_value().startswith("cancelled on purpose · "), timeout=15, interval=0.25)
    shot(page, "runs.png")
    page.get_by_role("button", name="Clone into form").click()
    page.get_by_text("is a copy of").wait_for()
    assert has_value(page, "Name", "e2e-cancel") and has_value(page, "Epochs", "200", nth=1)
    report(explorer["timings"], capsys)

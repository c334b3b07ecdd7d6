"""Retakes the explorer screenshots in docs/img from runs that already exist.

Starts `streamlit run explorer` headless on a runs directory, drives Debian's
Chromium (`/usr/bin/chromium`) with Playwright through the views the browser test
visits (tests/explorer/test_browser.py) and saves launch.png, runs.png,
compare_curves.png, confusion.png, gallery.png, per_class.png and
hyperparameters.png. The Compare page shows the newest completed runs (up to
three). Nothing here trains: no button that queues a run is pressed, and the
explorer's queue worker is given a trainer command that refuses. Like the explorer,
this process imports no Keras backend.

Example:

```bash
python scripts/docs_screenshots.py /tmp/screenshot-runs            # into docs/img
python scripts/docs_screenshots.py /tmp/screenshot-runs --out /tmp/shots
```
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `explorer` and `tlkit` from this checkout, also without `pip install -e`

from explorer import tables, ui  # noqa: E402  (after the path fix above)
from tlkit.run_queue import TRAIN_CMD_ENV  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH, HEIGHT = 1400, 1000
# Any queued run would fail at once instead of training (the script never queues one anyway).
REFUSING_TRAINER = shlex.join([sys.executable, "-c", "raise SystemExit('docs_screenshots.py does not train')"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def explorer_server(runs_dir: Path):
    """Yields the URL of a headless explorer on a free local port; stops it afterwards. Its output
    goes to a temp file, kept (and named) only when something fails."""
    port = free_port()
    env = {**os.environ, TRAIN_CMD_ENV: REFUSING_TRAINER}
    with tempfile.NamedTemporaryFile(prefix="docs-screenshots-streamlit-", suffix=".log", delete=False) as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "explorer", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
             "--", "--runs-dir", str(runs_dir)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, server, log.name)
            yield url
        except BaseException:
            print(f"streamlit's output: {log.name}", file=sys.stderr)
            raise
        else:
            os.unlink(log.name)
        finally:
            server.terminate()
            server.wait(timeout=20)


def wait_healthy(url: str, server: subprocess.Popen, log_name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"streamlit exited early; see {log_name}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"streamlit did not answer on {url} within {timeout:.0f} s; see {log_name}")


def shot(page, path: Path, height: int | None = None) -> None:
    """Saves a screenshot; a taller viewport shows more of the page (then goes back to the usual size)."""
    if height:
        page.set_viewport_size({"width": WIDTH, "height": height})
        page.locator('[data-testid="stMain"]').evaluate("main => main.scrollTo(0, 0)")
    # Not while a rerun is drawing: the toolbar then shows "Running…" and "Stop", and widgets not
    # drawn yet are grey skeletons.
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden")
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')")
    page.wait_for_timeout(1000)  # plotly's and the grid's last redraws
    page.screenshot(path=str(path))
    if height:
        page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    print(f"  {path}")


def open_finished(page) -> None:
    """Unfolds the sidebar's finished runs, so their cards and test accuracies show."""
    finished = page.locator('[data-testid="stSidebar"] .st-key-finished details')
    finished.wait_for()
    if finished.get_attribute("open") is None:
        finished.locator("summary").click()


def compare_runs(page, wanted: list[tables.RunSummary]) -> None:
    """Adds the runs the Compare page's picker does not show yet (it starts with two)."""
    picker = page.locator('[data-testid="stMultiSelect"]').first
    for summary in wanted:
        # Options and chosen runs read "title · state (id)", or "id · state" for an untitled run.
        if not picker.get_by_text(summary.run_id).count():
            picker.locator("input").click()  # not the box itself: its middle may be a chosen run's ×
            page.get_by_role("option", name=summary.run_id).click()
            page.keyboard.press("Escape")
            page.wait_for_timeout(800)
    page.evaluate("document.activeElement.blur()")  # no focus ring on the picker in the shots


def completed_runs(runs_dir: Path) -> list[tables.RunSummary]:
    """The completed runs with a confusion matrix, newest first; at least two, to compare."""
    summaries = tables.newest_first(tables.summarise_all(runs_dir))
    completed = [s for s in summaries if s.state == "completed" and s.metrics and s.metrics.get("confusion_matrix")]
    if len(completed) < 2:
        raise SystemExit(f"{runs_dir} needs at least two completed runs to compare; it has {len(completed)}")
    return completed


def take_screenshots(page, url: str, completed: list[tables.RunSummary], out: Path) -> None:
    compared = list(reversed(completed[:3]))  # oldest of them first, as they were made

    page.goto(url)
    page.get_by_text("Launch an experiment").wait_for(timeout=90_000)
    page.get_by_role("button", name="Launch").wait_for()
    open_finished(page)
    page.locator(f'[data-testid="stSidebar"] .st-key-{ui.card_key(completed[0].run_id)}').wait_for()
    shot(page, out / "launch.png", height=2300)

    page.get_by_role("link", name="Runs").click()
    page.get_by_text("Run details").wait_for()
    page.locator('[data-testid="stDataFrame"]').wait_for()
    page.get_by_text("★ best test acc").wait_for()
    page.get_by_role("tab", name="Title, tags & notes").click()
    shot(page, out / "runs.png", height=1200)

    page.get_by_role("link", name="Compare").click()
    page.get_by_text("Compare runs").wait_for()
    curves = page.locator('[data-testid="stPlotlyChart"]').first
    curves.locator(".main-svg").first.wait_for()  # the page's own pick of runs is drawn
    compare_runs(page, compared)
    curves.locator(".main-svg").first.wait_for()
    shot(page, out / "compare_curves.png")

    page.get_by_role("tab", name="Confusion").click()
    first = compared[0]
    title = tables.distinct_labels(compared)[first.run_id]  # as the page names it
    matrix_chart = page.locator('[data-testid="stPlotlyChart"]', has_text=f"{title} · acc").first
    matrix_chart.locator(".main-svg").first.wait_for()
    shot(page, out / "confusion.png", height=1250)

    # The gallery of the first run's most frequent confusion, picked by clicking its cell.
    matrix = first.metrics["confusion_matrix"]
    size = len(matrix)
    true, pred = max(((i, j) for i in range(size) for j in range(size) if i != j), key=lambda c: matrix[c[0]][c[1]])
    matrix_chart.locator("path.point").nth(true * size + pred).click(force=True)
    names = first.class_names
    page.locator('[data-testid="stImageCaption"]', has_text=f"{names[true]} → {names[pred]}").first.wait_for()
    page.wait_for_timeout(1500)  # the rerun replaces the whole gallery
    page.get_by_text("Misclassified test images", exact=True).scroll_into_view_if_needed()
    shot(page, out / "gallery.png")

    page.get_by_role("tab", name="Per class").click()
    page.locator('[data-testid="stPlotlyChart"]', has_text="Precision").locator(".main-svg").first.wait_for()
    shot(page, out / "per_class.png")

    page.get_by_role("tab", name="Hyperparameters").click()
    page.locator(".js-plotly-plot .parcoords").first.wait_for()
    shot(page, out / "hyperparameters.png", height=1450)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path, help="runs directory with at least two completed runs")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img", help="where the PNGs go (docs/img)")
    parser.add_argument("--chromium", type=Path, default=Path("/usr/bin/chromium"))
    args = parser.parse_args(argv)
    if not args.chromium.exists():
        raise SystemExit(f"{args.chromium} is missing; install Chromium (scripts/install-browser.sh)")
    runs_dir = args.runs_dir.resolve()
    completed = completed_runs(runs_dir)
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with explorer_server(runs_dir) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(args.chromium), args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}).new_page()
        page.set_default_timeout(30_000)
        take_screenshots(page, url, completed, args.out)
        browser.close()
    print(f"screenshots taken in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()

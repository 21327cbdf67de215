"""Screenshots of the validation reports in a headless browser with no network: the project's report.html (what KFP
and MLflow show) and, for contrast, Great Expectations' Data Docs, whose styles load from CDNs.

    .venv/bin/python bench/offline_report.py [--out bench/results]

Runs validate-events on a small simulated log with a logging loop added (so the report has passes, a quarantine and
a list of automated users), then screenshots both pages with Chromium (Debian's `chromium`), every host name
unresolvable and a dead proxy, so nothing can be fetched. tests/test_offline_report.py uses `screenshot`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def browser() -> str | None:
    """A headless-capable Chromium on PATH, or None."""
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 1500) -> subprocess.CompletedProcess:
    """Render `page` (a local HTML file) to `png` with no network at all."""
    exe = browser()
    if exe is None:
        raise RuntimeError(f"no Chromium found (tried {', '.join(BROWSERS)}): apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", f"--window-size={width},{height}",
             f"--screenshot={png}", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)


def make_report(root: Path) -> Path:
    """validate-events on a small simulated log with one logging loop; returns the output folder."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from bad_input_corpus import BY_NAME, EVENTS, ITEMS, write_folder  # noqa: E402

    from genrec.config import load_config
    from genrec.stages.validate_events import run_validate_events

    events, items = BY_NAME["oversized_request"].mutate(EVENTS.copy(), ITEMS.copy())
    events = events.copy()
    events.loc[events.index[[11, 12, 13]], "event_type"] = "view"  # and a few defects
    write_folder(root / "in", events, items)
    cfg = load_config(None, [f"run.work_dir={root}", "run.experiment=offline-report"])
    run_validate_events(cfg, root / "in", root / "out", "offline-report")
    return root / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = make_report(Path(tmp))
        for page, name in ((out / "report.html", "offline_report.png"),
                           (out / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html",
                            "offline_data_docs.png")):
            done = screenshot(page, args.out / name)
            print(f"{name}: exit {done.returncode}; {args.out / name}")


if __name__ == "__main__":
    main()

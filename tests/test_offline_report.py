"""The validation report renders with no network: a headless Chromium with every host unresolvable shows its tables
and status colours (bench/offline_report.py records the screenshot; .ci/run installs Debian's chromium)."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from offline_report import browser, make_report, screenshot  # noqa: E402

PASS_CELL = (0xDA, 0xFB, 0xE1)  # td.pass
FAIL_CELL = (0xFF, 0xEB, 0xE9)  # td.fail
QUARANTINED_CELL = (0xFF, 0xF8, 0xC5)  # td.quarantined
PASSED_BADGE = (0x1A, 0x7F, 0x37)


@pytest.fixture(scope="module")
def report(tmp_path_factory, mlflow_server):
    return make_report(tmp_path_factory.mktemp("offline"))


def test_the_report_page_fetches_nothing(report):
    page = (report / "report.html").read_text()
    assert "<table>" in page and "request_oversized" in page and "event_type_known" in page
    assert not re.search(r"""(src|href)\s*=|@import|url\(|<script|<link""", page, re.IGNORECASE)


def test_the_report_renders_offline_with_its_colours(report, tmp_path):
    if browser() is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    png = tmp_path / "report.png"
    done = screenshot(report / "report.html", png)
    assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(pixels, axis=0)}
    for name, rgb in (("passed badge", PASSED_BADGE), ("passing check", PASS_CELL), ("failed check", FAIL_CELL),
                      ("quarantined count", QUARANTINED_CELL)):
        assert rgb in colours, f"the {name} colour {rgb} is not on the screenshot: the page's styles did not render"
    # and a blank page has none of this: the text rendered too (more than a few colours: glyph edges)
    assert len(colours) > 50

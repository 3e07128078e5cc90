"""The study's report.html: self-contained (tables, embedded plots, no network), and it renders.

The rendering check opens the page in headless Chromium and screenshots it; it is skipped, saying
why, where no Chromium is installed (``apt-get install -y chromium``). By hand::

    chromium --headless --no-sandbox --screenshot=report.png --window-size=1200,2400 file://$PWD/runs/STUDY/report.html
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from vol_transfer.studies.report import write_report
from vol_transfer.studies.results import ArmResult, CurvePoint

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(name)), None)


def _results() -> list[ArmResult]:
    curve = [CurvePoint(i * 100, i * 60.0, 1.0 - 0.1 * i, 1.1 - 0.1 * i, 0.12 * i) for i in range(6)]
    return [ArmResult("scratch", best_iteration=400, dice={"train": [0.5, 0.6], "test": [0.31, 0.42]}, curve=curve,
                      step_time=1.5, wall_time=360.0),
            ArmResult("model_1", best_iteration=300, dice={"train": [0.7, 0.8], "test": [0.61, 0.66]}, curve=curve,
                      step_time=1.4, wall_time=330.0)]


@pytest.fixture()
def report_html(tmp_path):
    write_report(_results(), tmp_path, title="Freezing ablation <test>", kind="freeze_ablation", threshold=0.3)
    return tmp_path / "report.html"


def test_report_html_is_self_contained_with_tables_and_embedded_plots(report_html) -> None:
    page = report_html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>Freezing ablation &lt;test&gt;</title>" in page
    assert page.count("<table>") == 2 and "<td>model_1</td>" in page and "<td>0.6350</td>" in page
    sources = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page  # nothing fetched


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to render report.html (apt-get install -y chromium); "
                                             "the page's self-containment is still checked above")
def test_report_html_renders_in_headless_chromium(report_html, tmp_path) -> None:
    shot = tmp_path / "report.png"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-extensions", "--disable-background-networking",
               "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1100,2400", report_html.as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "Chromium wrote no screenshot"
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (2400, 1100)
    ink = (pixels.sum(axis=2) < 600).mean(axis=1)  # share of dark pixels in each row
    assert ink[:200].max() > 0.02, "no title or table drawn at the top"
    # the embedded plots were decoded and drawn: coloured (not grey) pixels appear down the page
    colour = np.abs(pixels[..., 0] - pixels[..., 2]) > 60
    assert colour.sum() > 1000 and np.ptp(colour.any(axis=1).nonzero()[0]) > 300, "no plot drawn"

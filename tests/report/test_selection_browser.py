"""A small selection's ``report.html`` opened in a real browser (headless Chromium): every image decodes, every
table has rows, every section is there, and the page renders. Skipped where no Chromium is installed; nothing
is downloaded (network off for the browser)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from gradsift.data.demo import write_demo_data
from gradsift.pipeline import SelectConfig, run_select
from gradsift.report.selection import SECTIONS

BROWSER = next(
    (p for name in ("chromium", "chromium-browser", "google-chrome", "chrome") if (p := shutil.which(name))), None
)
pytestmark = [pytest.mark.browser, pytest.mark.skipif(BROWSER is None, reason="no Chromium on this machine")]

# Appended to a copy of the page (the page itself has no scripts): after load, what the browser made of it.
CHECK = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const result = {
    images: images.map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
    tables: [...document.querySelectorAll("table")].map(t => t.tBodies.length ? t.tBodies[0].rows.length : 0),
    sections: [...document.querySelectorAll("h2[id]")].map(h => h.id),
    width: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
  };
  const pre = document.createElement("pre");
  pre.id = "browser-check";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


def chromium(profile, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing on the page may come from the network
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([BROWSER, *flags, *args], capture_output=True, text=True, timeout=180)


def test_the_report_renders_in_chromium(tmp_path, tiny_model_dir):
    pool, targets = write_demo_data(tmp_path / "data", n_pool=40, n_targets=4, seed=3)
    res = run_select(
        SelectConfig(
            pool=str(pool),
            targets=str(targets),
            out=str(tmp_path / "run"),
            model=str(tiny_model_dir),
            device="cpu",
            methods=["less", "bids", "random"],
            budget="20%",
            max_length=96,
            options={"warmup": "none"},
        )
    )
    assert res.report is not None
    page = res.report.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK + "</body>"))

    done = chromium(tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:]
    result = json.loads(found.group(1))
    print(f"\nchromium: {BROWSER}; page {len(page):,} bytes")
    print("images (complete, natural size):", [(i["complete"], i["width"], i["height"]) for i in result["images"]])
    print("table body rows:", result["tables"])
    print("sections:", result["sections"], f"; rendered {result['width']} x {result['height']} px")

    assert len(result["images"]) == page.count("<img ") >= 5
    assert all(i["complete"] and i["width"] > 100 and i["height"] > 100 for i in result["images"])
    assert len(result["tables"]) == page.count("<table") and all(n > 0 for n in result["tables"])
    assert result["sections"] == [sid for sid, _ in SECTIONS]
    assert result["width"] <= 1400  # no table or figure wider than the page

    shot = tmp_path / "report.png"
    done = chromium(tmp_path / "profile-shot", "--window-size=1280,2400", f"--screenshot={shot}", res.report.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    print(f"screenshot {shot} {pixels.shape[1]} x {pixels.shape[0]}, grey-level std {pixels.std():.1f}")
    assert pixels.shape == (2400, 1280) and pixels.std() > 20  # not a blank page

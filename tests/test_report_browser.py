"""The HTML report in a real browser (headless Chromium through Selenium): it opens from its
folder, every figure loads, the training curves and the fitted-law table are there, and a part
that could not be fitted says why where it stands. .ci/run installs Debian's chromium and
chromium-driver; where they are missing the test is skipped, saying so."""

from __future__ import annotations

import json
import shutil

import pytest

from analysis import synthetic
from analysis.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (CHROMIUM and DRIVER):
        pytest.skip("chromium and chromedriver are not installed (Debian: chromium chromium-driver; .ci/run installs them)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.mark.slow(16)
def test_the_report_opens_from_its_folder_with_every_figure(tmp_path, browser) -> None:
    runs = synthetic.sweep_records(seed=0)
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    synthetic.write_curves([r for r in runs if r.get("max_len") != 50], tmp_path)  # some runs without curves
    build_report(tmp_path / "results.jsonl", tmp_path / "report")
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "report", moved)  # relative links: the folder opens wherever it is
    browser.get((moved / "report.html").as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);")
    assert len(images) >= 12 and all(loaded for _, loaded in images), [src for src, ok in images if not ok]
    assert any(src.startswith("figures/curve_eval_loss_vs_train_flops") for src, _ in images)
    headings = browser.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent);")
    assert "Training curves" in headings and "Fitted laws" in headings
    laws = browser.execute_script(
        "const h = Array.from(document.querySelectorAll('h2')).find(h => h.textContent === 'Fitted laws');"
        "const table = h.nextElementSibling.querySelector('table');"
        "return Array.from(table.rows).map(r => r.cells[0].textContent);")
    assert laws[0] == "law" and "frontier L(C), whole curves (approach 1)" in laws and "frontier L(C)" in laws
    widths = browser.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth,"
        " Math.max(...Array.from(document.querySelectorAll('.scroll')).map(d => d.scrollWidth))];")
    assert widths[0] <= widths[1] < widths[2]  # the wide runs table scrolls inside the page, not the page
    (moved / "screenshot.png").write_bytes(browser.get_screenshot_as_png())


def test_a_section_that_cannot_be_fitted_says_why_where_it_stands(tmp_path, browser) -> None:
    runs = [r for r in synthetic.sweep_records(seed=0) if r.get("max_len") == 200 and r.get("steps") == 3200]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    build_report(tmp_path / "results.jsonl", tmp_path / "report")
    browser.get((tmp_path / "report" / "report.html").as_uri())
    follows = browser.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('h2')).map(h => "
        "[h.textContent, h.nextElementSibling ? h.nextElementSibling.textContent : '']));")
    assert follows["Joint law L(N, D) and compute-optimal allocation"].startswith(
        "Not shown: Chinchilla joint law: needs at least 3 distinct values of both N and D")
    assert follows["Training curves"].startswith("Not shown: training curves: no evaluation records in")

"""The worklist page in a real browser (Debian's headless Chromium through Selenium).

A study sent by C-STORE appears without a reload, with its picture loaded; a newer but
non-urgent study arrives live and sorts below the urgent one.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

from fixtures.series import make_cr_study, make_ct_series
from tests.conftest import node_config, storescu
from tests.peers import NodeProcess, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# What the page shows, read in the browser: one entry per study, in page order.
LISTED = """
return [...document.querySelectorAll('#studies > li')].map((li) => {
  const img = li.querySelector('img.radiograph');
  return {uid: li.dataset.studyUid, state: li.dataset.state,
          urgent: li.classList.contains('urgent'), text: li.innerText,
          image: img ? (img.complete ? img.naturalWidth : 0) : null};
});
"""


def _chromium() -> WebDriver:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not installed: the worklist page is tested in Debian's "
            "chromium with chromium-driver (`make install-peers` installs both)"
        )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


@pytest.fixture
def served(tmp_path: Path, test_model: Path) -> Iterator[tuple[NodeProcess, dict[str, Any]]]:
    config_path, config = node_config(
        tmp_path,
        test_model,
        node={"stable_seconds": 1},
        localization={"findings": ["pneumothorax"]},
        # Chest radiographs only: the CT study is listed (skipped) and costs no model time.
        routing=[
            {
                "name": "chest radiograph",
                "match": {"modality": ["CR", "DX"], "body_part": ["CHEST"]},
                "task": "cxr-report",
            }
        ],
    )
    node = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"])
    try:
        yield node, config
    finally:
        node.stop()


@pytest.fixture
def browser(served: tuple[NodeProcess, dict[str, Any]]) -> Iterator[WebDriver]:
    """Chromium, started while the node starts (each takes seconds)."""
    node, _config = served
    with ThreadPoolExecutor(max_workers=1) as pool:
        starting = pool.submit(node.start)
        driver = _chromium()
        try:
            starting.result()
        except BaseException:
            driver.quit()
            raise
    try:
        yield driver
    finally:
        driver.quit()


def _listed(driver: WebDriver) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = driver.execute_script(LISTED)
    return result


def test_worklist_lists_live_urgent_first_with_the_picture(
    tmp_path: Path, served: tuple[NodeProcess, dict[str, Any]], browser: WebDriver
) -> None:
    node, config = served
    port = config["node"]["port"]
    url = f"http://127.0.0.1:{config['node']['http_port']}/"
    wait_for(lambda: requests.get(url, timeout=5).ok, timeout=30, what="the worklist page")
    browser.get(url)
    browser.execute_script("window.loadedOnce = true")  # gone if the page reloads
    banner = browser.find_element("id", "disclaimer").text
    assert "NOT FOR DIAGNOSTIC USE" in banner and "UNVERIFIED" in banner
    wait_for(
        lambda: browser.find_element("id", "empty").is_displayed(),
        timeout=10,
        what="the page to show an empty list",
    )

    # A chest radiograph: its "pneumothorax" box makes it urgent.
    cr = make_cr_study(tmp_path / "cr", accession_number="ACC-PAGE-CR")
    cr_uid = str(pydicom.dcmread(cr, stop_before_pixels=True).StudyInstanceUID)
    assert storescu(port, [cr]).returncode == 0
    (shown,) = wait_for(
        lambda: [s for s in _listed(browser) if s["state"] == "done" and s["image"]],
        timeout=60,
        what="the CR study done, its picture loaded",
    )
    assert shown["uid"] == cr_uid and shown["urgent"] is True, node.log()
    assert shown["image"] > 0  # naturalWidth of the loaded PNG
    for words in (
        "URGENT: pneumothorax",
        "TEST MODEL",
        "NOT FOR DIAGNOSTIC USE",  # the picture's caption
        "ACC-PAGE-CR",
        "cxr-report",
    ):
        assert words in shown["text"]

    # A newer study, not urgent (a CT no rule routes): it appears without a reload, below.
    ct = make_ct_series(tmp_path / "ct", n_slices=6, accession_number="ACC-PAGE-CT")
    ct_uid = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    assert storescu(port, ct).returncode == 0
    listed = wait_for(
        lambda: (studies := _listed(browser)) and len(studies) == 2 and studies,
        timeout=20,
        what="the CT study on the page",
    )
    assert [s["uid"] for s in listed] == [cr_uid, ct_uid]
    assert listed[1]["urgent"] is False and "ACC-PAGE-CT" in listed[1]["text"]
    assert browser.execute_script("return window.loadedOnce === true")

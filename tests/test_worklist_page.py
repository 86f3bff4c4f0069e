"""The worklist page in a real browser (Debian's headless Chromium through Selenium).

With a token configured: studies sent by C-STORE appear as table rows without a reload,
with patient name and ID; the column headers sort, the filter box and the state filter
narrow the rows; the selected row's picture (boxes burned in) shows beside the table with
an "Open in viewer" link from ``node.viewer_url``. Without a token the patient columns
show "—" with a tooltip saying why, and there is no viewer link unless one is configured.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from fixtures.series import make_cr_study, make_ct_series
from tests.browser import chromium
from tests.conftest import node_config, storescu
from tests.peers import NodeProcess, wait_for

TOKEN_ENV = "MGN_PAGE_TEST_TOKEN"
TOKEN = "page-test-token-0123456789abcdef"
VIEWER = "https://ohif.example/viewer?StudyInstanceUIDs={StudyInstanceUID}&useCPURendering=true"

# What the table shows, read in the browser: one entry per row, in page order.
ROWS = """
return [...document.querySelectorAll('#studies > tr')].map((tr) => {
  const cells = [...tr.cells];
  return {uid: tr.dataset.studyUid, state: tr.dataset.state,
          urgent: tr.classList.contains('urgent'), selected: tr.classList.contains('selected'),
          cells: cells.map((td) => td.innerText.trim()),
          titles: cells.map((td) => td.title)};
});
"""
# The selected study's picture: naturalWidth once loaded, and how many of its pixels are the
# boxes' amber (read back through a canvas: the image is same-origin).
PICTURE = """
const img = document.querySelector('#detail img.radiograph');
if (!img) return null;
if (!img.complete || img.naturalWidth === 0) return {width: 0, amber: 0};
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const context = canvas.getContext('2d');
context.drawImage(img, 0, 0);
const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
let amber = 0;
for (let i = 0; i < data.length; i += 4) {
  if (Math.abs(data[i] - 255) + Math.abs(data[i + 1] - 200) + data[i + 2] < 60) amber += 1;
}
return {width: img.naturalWidth, amber: amber};
"""
# The table's columns, as worklist.html orders them.
PATIENT, PATIENT_ID, DATE, DESCRIPTION, ACCESSION, MODALITY, FINDINGS, URGENCY, STATE = range(9)


@contextmanager
def _node_and_browser(
    tmp_path: Path, test_model: Path, **node: Any
) -> Iterator[tuple[NodeProcess, dict[str, Any], WebDriver]]:
    """A node (``node`` settings added) and Chromium, started side by side (each takes seconds)."""
    config_path, config = node_config(
        tmp_path,
        test_model,
        node={"stable_seconds": 1, **node},
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
    process = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"])
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            starting = pool.submit(process.start)
            driver = chromium()
            try:
                starting.result()
            except BaseException:
                driver.quit()
                raise
        try:
            yield process, config, driver
        finally:
            driver.quit()
    finally:
        process.stop()


def _relabel(paths: list[Path], **attributes: str) -> None:
    """Set study-level attributes on every file of a study, as a modality would have."""
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(path)


def _rows(driver: WebDriver) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = driver.execute_script(ROWS)
    return result


def _uids(driver: WebDriver) -> list[str]:
    return [row["uid"] for row in _rows(driver)]


def _sort_by(driver: WebDriver, key: str) -> str:
    """Click a column header; return its aria-sort afterwards."""
    header = driver.find_element("css selector", f'#worklist th[data-sort="{key}"]')
    header.find_element("tag name", "button").click()
    return str(header.get_attribute("aria-sort"))


def _filter(driver: WebDriver, text: str) -> None:
    """Type into the filter box as a reader does (WebDriver's clear() fires no input event)."""
    box = driver.find_element("id", "filter")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    if text:
        box.send_keys(text)


def _select(driver: WebDriver, study_uid: str) -> None:
    driver.find_element("css selector", f'#studies tr[data-study-uid="{study_uid}"]').click()


def _api_studies(url: str, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    response = requests.get(f"{url}/api/studies", headers=headers, timeout=10)
    response.raise_for_status()
    return {study["study_instance_uid"]: study for study in response.json()}


def test_table_with_token_shows_patients_sorts_filters_and_opens_the_viewer(
    tmp_path: Path, test_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)  # the node process inherits it
    served = _node_and_browser(tmp_path, test_model, http_token_env=TOKEN_ENV, viewer_url=VIEWER)
    with served as (node, config, browser):
        port = config["node"]["port"]
        url = f"http://127.0.0.1:{config['node']['http_port']}"
        authorized = {"Authorization": f"Bearer {TOKEN}"}
        browser.get(f"{url}/?token={TOKEN}")  # sets the cookie the page's requests carry
        browser.execute_script("window.loadedOnce = true")  # gone if the page reloads
        banner = browser.find_element("id", "disclaimer").text
        assert "NOT FOR DIAGNOSTIC USE" in banner and "UNVERIFIED" in banner
        wait_for(
            lambda: browser.find_element("id", "empty").is_displayed(),
            timeout=10,
            what="the page to show an empty list",
        )

        # A chest radiograph: its "pneumothorax" box makes it urgent.
        cr = make_cr_study(tmp_path / "cr", accession_number="ACC-PAGE-CR", study_date="20240105")
        _relabel(
            [cr],
            PatientName="Zulu^Jane",
            PatientBirthDate="19700102",
            PatientSex="F",
            StudyDescription="CHEST PA",
            StudyTime="093000",
        )
        cr_uid = str(pydicom.dcmread(cr, stop_before_pixels=True).StudyInstanceUID)
        assert storescu(port, [cr]).returncode == 0
        (row,) = wait_for(
            lambda: [r for r in _rows(browser) if r["state"] == "done"],
            timeout=90,
            what="the CR study done on the page",
        )
        assert row["uid"] == cr_uid and row["urgent"] is True, node.log()
        cells = row["cells"]
        assert cells[PATIENT].splitlines() == ["Zulu, Jane", "1970-01-02 · F"]
        assert cells[PATIENT_ID] == "MGN-CR-1"
        assert cells[DATE].split() == ["2024-01-05", "09:30"]
        assert (cells[DESCRIPTION], cells[ACCESSION], cells[MODALITY]) == (
            "CHEST PA",
            "ACC-PAGE-CR",
            "CR",
        )
        assert "pneumothorax" in cells[FINDINGS] and "TEST MODEL" in cells[FINDINGS]
        assert cells[URGENCY] == "URGENT: pneumothorax" and cells[STATE] == "done"

        # The API behind the token carries the same, patient data included.
        api = _api_studies(url, authorized)[cr_uid]
        assert api["patient_hidden"] is False
        assert (api["patient_name"], api["patient_id"]) == ("Zulu, Jane", "MGN-CR-1")
        assert (api["patient_birth_date"], api["patient_sex"]) == ("1970-01-02", "F")
        assert (api["study_date"], api["study_time"]) == ("2024-01-05", "09:30:00")
        assert api["modalities"] == ["CR"] and api["study_description"] == "CHEST PA"
        assert api["viewer_url"] == VIEWER.replace("{StudyInstanceUID}", cr_uid)
        assert requests.get(f"{url}/api/studies", timeout=10).status_code == 401

        # A newer study, not urgent (a CT no rule routes): it appears without a reload, below.
        ct = make_ct_series(tmp_path / "ct", n_slices=4, accession_number="ACC-PAGE-CT")
        _relabel(ct, PatientName="Adams^Zoe", StudyDescription="CT ABDOMEN", StudyDate="20230301")
        ct_uid = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
        assert storescu(port, ct).returncode == 0
        wait_for(
            lambda: [r["state"] for r in _rows(browser)] == ["done", "skipped"],
            timeout=30,
            what="the CT study listed (skipped) below the urgent CR",
        )
        assert _uids(browser) == [cr_uid, ct_uid]  # urgent first, then newest
        assert browser.execute_script("return window.loadedOnce === true")

        # Sorting: patient A→Z, then Z→A; date newest first, then oldest first; urgency.
        assert _sort_by(browser, "patient") == "ascending"
        assert _uids(browser) == [ct_uid, cr_uid]
        assert _sort_by(browser, "patient") == "descending"
        assert _uids(browser) == [cr_uid, ct_uid]
        assert _sort_by(browser, "date") == "descending"
        assert _uids(browser) == [cr_uid, ct_uid]
        assert _sort_by(browser, "date") == "ascending"
        assert _uids(browser) == [ct_uid, cr_uid]
        assert _sort_by(browser, "state") == "ascending"  # done before skipped
        assert _uids(browser) == [cr_uid, ct_uid]
        assert _sort_by(browser, "urgency") == "descending"
        assert _uids(browser) == [cr_uid, ct_uid]

        # The filter box: description, accession, patient name, case-insensitively.
        for text, expected in (
            ("abdomen", [ct_uid]),
            ("acc-page-cr", [cr_uid]),
            ("zulu", [cr_uid]),
            ("nobody", []),
            ("", [cr_uid, ct_uid]),
        ):
            _filter(browser, text)
            assert _uids(browser) == expected, text
        _filter(browser, "nobody")
        assert browser.find_element("id", "empty").text == "No study matches the filter."
        _filter(browser, "")

        # The state filter asks the server (job states included).
        Select(browser.find_element("id", "state-filter")).select_by_value("skipped")
        wait_for(lambda: _uids(browser) == [ct_uid], timeout=10, what="only the skipped CT")
        Select(browser.find_element("id", "state-filter")).select_by_value("done")
        wait_for(lambda: _uids(browser) == [cr_uid], timeout=10, what="only the done CR")
        Select(browser.find_element("id", "state-filter")).select_by_value("")
        wait_for(lambda: len(_uids(browser)) == 2, timeout=10, what="both studies again")

        # Selecting the CR: its picture with the amber box beside the table, and the link.
        _select(browser, cr_uid)
        picture = wait_for(
            lambda: (p := browser.execute_script(PICTURE)) and p["width"] > 0 and p,
            timeout=30,
            what="the CR's picture loaded beside the table",
        )
        assert picture["amber"] > 100, picture  # the box outline burned into the PNG
        assert [r["uid"] for r in _rows(browser) if r["selected"]] == [cr_uid]
        detail = browser.find_element("id", "detail").text
        assert "NOT FOR DIAGNOSTIC USE" in detail and "Zulu, Jane" in detail
        link = browser.find_element("id", "viewer-link")
        assert link.text == "Open in viewer"
        assert link.get_attribute("href") == VIEWER.replace("{StudyInstanceUID}", cr_uid)
        assert link.get_attribute("target") == "_blank"

        # The selection survives live updates; the CT has no picture, but its own link.
        _select(browser, ct_uid)
        assert browser.execute_script(PICTURE) is None
        assert "No picture for this study." in browser.find_element("id", "detail").text
        href = browser.find_element("id", "viewer-link").get_attribute("href")
        assert href == VIEWER.replace("{StudyInstanceUID}", ct_uid)


def test_without_a_token_patient_columns_are_hidden_and_there_is_no_viewer_link(
    tmp_path: Path, test_model: Path
) -> None:
    with _node_and_browser(tmp_path, test_model, http_token_env=None) as (node, config, browser):
        url = f"http://127.0.0.1:{config['node']['http_port']}"
        page = requests.get(f"{url}/", timeout=10)
        assert page.status_code == 200
        # Everything inline: nothing loaded from elsewhere (the node has no network).
        assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page.text)
        assert not re.search(r"@import|url\(", page.text)
        browser.get(f"{url}/")

        ct = make_ct_series(tmp_path / "ct", n_slices=4, accession_number="ACC-NOTOKEN")
        _relabel(ct, PatientName="Hidden^Harriet", PatientID="PID-HIDDEN-7")
        ct_uid = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
        assert storescu(config["node"]["port"], ct).returncode == 0
        (row,) = wait_for(
            lambda: [r for r in _rows(browser) if r["state"] == "skipped"],
            timeout=30,
            what="the CT study on the page",
        )
        assert row["uid"] == ct_uid, node.log()
        assert row["cells"][PATIENT] == "—" and row["cells"][PATIENT_ID] == "—"
        for column in (PATIENT, PATIENT_ID):
            assert "token" in row["titles"][column]
        assert row["cells"][ACCESSION] == "ACC-NOTOKEN"
        assert browser.find_element("id", "phi-note").is_displayed()
        # The patient name can't be filtered for either: the page never had it.
        _filter(browser, "harriet")
        assert _uids(browser) == []
        _filter(browser, "")

        _select(browser, ct_uid)
        detail = browser.find_element("id", "detail")
        assert "ACC-NOTOKEN" in detail.text and "—" in detail.text
        assert not browser.find_elements("id", "viewer-link")

        raw = requests.get(f"{url}/api/studies", timeout=10)
        (study,) = raw.json()
        assert study["patient_hidden"] is True and study["viewer_url"] is None
        assert all(study[key] is None for key in ("patient_name", "patient_id"))
        for patient_value in ("Harriet", "PID-HIDDEN-7"):
            assert patient_value not in raw.text
            assert patient_value not in browser.page_source

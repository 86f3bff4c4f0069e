"""The OHIF viewer (3.13, the npm package's built app) reads the node over DICOMweb.

OHIF is served from its own origin, so the node's CORS setting is exercised too. In
Debian's headless Chromium: the study list shows the study, and the viewer draws the
chest radiograph with the node's SR finding as a shape over it.

Headless Chromium's software WebGL draws 16-bit images black: the viewer is opened with
``useCPURendering=true``. OHIF 3.13 places SR coordinates only on images that carry an
image plane (a CR without ImageOrientationPatient/ImagePositionPatient gives NaN points,
OHIF's limitation), so the radiograph sent here carries one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.webdriver import WebDriver

from fixtures.series import make_cr_study
from tests.browser import chromium
from tests.conftest import node_config, storescu
from tests.ohif import OhifViewer
from tests.peers import NodeProcess, free_port, wait_for

# Shapes OHIF's measurement tools draw (SVG under each viewport's .svg-layer).
SHAPES = """
return document.querySelectorAll(
  '.svg-layer rect, .svg-layer polyline, .svg-layer path, .svg-layer ellipse, .svg-layer circle'
).length;
"""
# How much of the viewport canvas is not black (the radiograph drawn at all).
DRAWN = """
const canvas = document.querySelector('canvas.cornerstone-canvas');
if (!canvas || !canvas.width) return -1;
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let lit = 0;
for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 30) lit += 1;
return lit / (data.length / 4);
"""
CLICK_YES = """
const yes = [...document.querySelectorAll('button')].find((b) => b.innerText.trim() === 'Yes');
if (yes) { yes.click(); return true; }
return false;
"""


@pytest.fixture(scope="module")
def viewed(
    tmp_path_factory: pytest.TempPathFactory, test_model: Path
) -> Iterator[tuple[dict[str, Any], str, WebDriver, OhifViewer]]:
    """A node whose chest radiograph job is done, OHIF pointed at it, and a browser."""
    tmp_path = tmp_path_factory.mktemp("ohif")
    http_port = free_port()
    http = f"http://127.0.0.1:{http_port}"
    viewer = OhifViewer(f"{http}/dicom-web").start()
    config_path, config = node_config(
        tmp_path,
        test_model,
        node={"http_port": http_port, "stable_seconds": 1, "cors_origins": [viewer.url]},
        localization={"findings": ["pneumothorax"]},
        priors={"enabled": False},
    )
    cr = make_cr_study(tmp_path / "in", patient_id="OHIF-1", accession_number="OHIFACC1")
    ds = pydicom.dcmread(cr)
    # The image plane OHIF needs to place SR coordinates (see the module docstring).
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.PixelSpacing = [0.15, 0.15]
    ds.PatientName = "Viewer^Olive"
    ds.save_as(cr)
    study_uid = str(ds.StudyInstanceUID)
    process = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"]).start()
    driver = chromium()
    try:
        assert storescu(config["node"]["port"], [cr]).returncode == 0
        wait_for(
            lambda: [
                job
                for study in requests.get(f"{http}/api/studies", timeout=10).json()
                for job in study["jobs"]
                if study["study_instance_uid"] == study_uid and job["state"] == "done"
            ],
            timeout=180,
            what="the chest radiograph's job to finish",
        )
        yield config, study_uid, driver, viewer
    finally:
        driver.quit()
        viewer.stop()
        process.stop()


def _seen(driver: WebDriver) -> str:
    """What the browser shows and logged: the message when OHIF doesn't get there."""
    body = driver.find_element("tag name", "body").text[:1500]
    logged = "\n".join(
        str(entry.get("message", ""))[:400] for entry in driver.get_log("browser")[-15:]
    )
    return f"page text:\n{body}\nbrowser log:\n{logged}"


def _sr_series(http: str, study_uid: str) -> str:
    answer = requests.get(
        f"{http}/dicom-web/studies/{study_uid}/series",
        params={"Modality": "SR"},
        headers={"Accept": "application/dicom+json"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    (series,) = answer.json()
    return str(series["0020000E"]["Value"][0])


def test_the_study_list_shows_the_node_s_study(
    viewed: tuple[dict[str, Any], str, WebDriver, OhifViewer],
) -> None:
    _config, _study_uid, driver, viewer = viewed
    driver.get(f"{viewer.url}/")
    try:
        listed = wait_for(
            lambda: (
                "Viewer, Olive" in driver.find_element("tag name", "body").text
                and driver.find_element("tag name", "body").text
            ),
            timeout=90,
            what="OHIF's study list to show the study's patient",
        )
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{_seen(driver)}") from None
    # One study; its modalities include the node's own SR beside the radiograph.
    assert "1-1 of 1" in listed
    assert "CR\\PR\\SR" in listed or "CR\\SR\\PR" in listed, listed


def test_the_viewer_draws_the_radiograph_and_the_sr_finding_over_it(
    viewed: tuple[dict[str, Any], str, WebDriver, OhifViewer],
) -> None:
    config, study_uid, driver, viewer = viewed
    http = f"http://127.0.0.1:{config['node']['http_port']}"
    sr_series = _sr_series(http, study_uid)
    driver.get(
        f"{viewer.url}/viewer?StudyInstanceUIDs={study_uid}"
        f"&initialSeriesInstanceUID={sr_series}&useCPURendering=true"
    )

    def shapes_drawn() -> int:
        try:
            driver.execute_script(CLICK_YES)  # "track measurements?": OHIF asks first
            count: int = driver.execute_script(SHAPES)
        except WebDriverException:
            return 0
        return count

    try:
        assert wait_for(shapes_drawn, timeout=120, what="OHIF to draw the SR's finding") > 0
        lit = wait_for(
            lambda: (driver.execute_script(DRAWN) or 0) > 0.05 and driver.execute_script(DRAWN),
            timeout=60,
            what="the radiograph drawn (not black) in the viewport",
        )
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{_seen(driver)}") from None
    assert lit > 0.05
    # Kept beside the node's data for whoever wants to see what the browser drew.
    driver.save_screenshot(str(Path(config["node"]["data_dir"]).parent / "ohif-viewer.png"))

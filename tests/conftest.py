"""Fixtures shared by the suite: strict pydicom, the test model, real peers on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom.config
import pytest
import yaml

from node.store.meta import InstanceMeta
from tests.peers import NODELAY_ENV, Orthanc, Postgres, free_port

if TYPE_CHECKING:
    from node.inference.engine import TransformersEngine

# Reading anything the node wrote must pass pydicom's strict checks.
pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE


@pytest.fixture(scope="session")
def test_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Gemma 3 checkpoint, built once per run (or reused from MEDGEMMA_TEST_MODEL)."""
    from node.testing.checkpoint import build_test_model

    cached = os.environ.get("MEDGEMMA_TEST_MODEL")
    if cached and (Path(cached) / "config.json").exists():
        return Path(cached)
    return build_test_model(tmp_path_factory.mktemp("test-model"))


@pytest.fixture(scope="session")
def engine(test_model: Path) -> TransformersEngine:
    """The test checkpoint loaded in this process, as the worker loads it."""
    from node.config import ModelSettings
    from node.inference.engine import TransformersEngine, load_engine

    loaded = load_engine(ModelSettings(engine="test", path=test_model), Path("unused-data-dir"))
    assert isinstance(loaded, TransformersEngine)
    return loaded


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path / "orthanc")
    yield pacs
    pacs.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    server = Postgres(Path("/tmp") / f"mgn-pg-{os.getpid()}").start()
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


def instance_meta(
    study_uid: str, sop: int, *, series: int = 1, modality: str = "CR", own: bool = False
) -> InstanceMeta:
    """What the index keeps of a CR instance, for tests that file straight into an Index."""
    return InstanceMeta(
        study_uid=study_uid,
        series_uid=f"{study_uid}.{series}",
        sop_uid=f"{study_uid}.{series}.{sop}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_id="P",
        accession_number=None,
        modality=modality,
        body_part="CHEST",
        series_description=None,
        image_type="ORIGINAL\\PRIMARY",
        calling_ae="MOD",
        is_own_result=own,
    )


def node_config(tmp_path: Path, model_path: Path, **sections: Any) -> tuple[Path, dict[str, Any]]:
    """A config file for a node on free ports under ``tmp_path``; ``sections`` override keys."""
    config: dict[str, Any] = {
        "node": {
            "ae_title": "MEDGEMMA",
            "port": free_port(),
            "http_port": free_port(),
            "data_dir": str(tmp_path / "node-data"),
            "stable_seconds": 2,
        },
        "model": {"engine": "test", "path": str(model_path), "max_new_tokens": 80},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def storescu(
    port: int,
    files: list[Path],
    *,
    aet: str = "STORESCU",
    called: str = "MEDGEMMA",
    extra: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "storescu",
            "-aet",
            aet,
            "-aec",
            called,
            *(extra or []),
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        env=NODELAY_ENV,
        timeout=300,
        check=False,
    )


def echoscu(
    port: int, *, aet: str = "ECHOSCU", called: str = "MEDGEMMA"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", aet, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        env=NODELAY_ENV,
        timeout=60,
        check=False,
    )

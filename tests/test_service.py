"""The serving node as an administrator sees it: a model that can't load stops it with a reason."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import node_config
from tests.peers import serve_until_exit


def test_serve_stops_with_a_reason_when_the_model_cannot_load(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    # MedGemma asked for at a path that isn't there (the test engine would build one there).
    config_path, _ = node_config(tmp_path, missing, model={"engine": "transformers"})
    result = serve_until_exit(config_path)
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "could not load the model" in result.stderr


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("port", "cannot listen on DICOM port {port} (node.port)"),
        ("http_port", "cannot listen on HTTP port {port} (node.http_port, on 127.0.0.1)"),
    ],
)
def test_serve_names_the_port_when_it_is_taken(tmp_path: Path, key: str, message: str) -> None:
    config_path, config = node_config(tmp_path, tmp_path / "model-unused")
    port = config["node"][key]
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", port))
        taken.listen()
        result = serve_until_exit(config_path)
    assert result.returncode == 1
    assert message.format(port=port) in result.stderr

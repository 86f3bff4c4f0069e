"""Configuration is validated once: a bad key or value stops the node, naming key and file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from node.config import ConfigError, Task, load_settings, parse_settings
from tests.peers import NODE_BIN, REPO


def test_embedded_defaults_and_shipped_file_agree() -> None:
    embedded = load_settings(None)
    shipped = load_settings(REPO / "config" / "node.yaml")
    assert embedded == shipped
    # Everything binds to loopback unless opened up; HTTP asks for the token in this variable.
    assert embedded.node.host == "127.0.0.1" and embedded.node.http_host == "127.0.0.1"
    assert embedded.node.http_token_env == "MEDGEMMA_HTTP_TOKEN"
    assert embedded.node.tls is None
    assert (embedded.node.plain_port, embedded.node.tls_port) == (11112, None)
    assert [r.task for r in embedded.routing] == [
        Task.CXR_REPORT,
        Task.CT_VOLUME,
        Task.MR_VOLUME,
        Task.WSI,
        Task.LAB_REPORT,
    ]
    assert embedded.node.resolved_database_url.startswith("sqlite:///")
    # a file without a routing section gets the same default rules
    assert parse_settings("node: {port: 104}\n", "test").routing == embedded.routing


def test_docker_file_differs_only_where_a_container_must() -> None:
    embedded = load_settings(None)
    docker = load_settings(REPO / "config" / "docker.yaml")
    # A container listens on every interface (its ports are published) and keeps its data
    # on the /data volume; nothing else differs.
    assert docker.node.data_dir == Path("/data")
    assert docker.node.host == "0.0.0.0" and docker.node.http_host == "0.0.0.0"
    # `make run` runs the test model on purpose; a container is for MedGemma.
    assert embedded.model.engine == "test" and docker.model.engine == "transformers"
    expected = embedded.model_copy(
        update={
            "node": embedded.node.model_copy(
                update={"data_dir": Path("/data"), "host": "0.0.0.0", "http_host": "0.0.0.0"}
            ),
            "model": embedded.model.model_copy(update={"engine": "transformers"}),
        }
    )
    assert docker == expected


def test_a_model_section_that_does_not_ask_for_the_test_model_means_medgemma() -> None:
    assert parse_settings("node: {port: 104}\n", "test").model.engine == "transformers"
    assert parse_settings("model: {path: /models/x}\n", "test").model.engine == "transformers"
    assert parse_settings("model: {engine: test}\n", "test").model.engine == "test"


def test_tls_ports() -> None:
    files = "certificate: node.pem, private_key: node.key"
    alone = parse_settings(f"node: {{port: 2762, tls: {{{files}}}}}\n", "test").node
    assert (alone.plain_port, alone.tls_port) == (None, 2762)
    both = parse_settings(f"node: {{tls: {{port: 2762, {files}}}}}\n", "test").node
    assert (both.plain_port, both.tls_port) == (11112, 2762)
    assert both.tls is not None and both.tls.ca_certificates is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node: {ae_titel: X}\n", "node.ae_titel: Extra inputs are not permitted"),
        ("node: {port: 70000}\n", "node.port"),
        ("node: {ae_title: WAY_TOO_LONG_AE_TITLE}\n", "node.ae_title"),
        ("model: {engine: onnx}\n", "model.engine"),
        ("outputs: [sr, pdf]\n", "outputs.1"),
        (
            "routing: [{name: x, task: cxr-report, match: {series_description: '('}}]\n",
            "routing.0.match.series_description",
        ),
        ("pacs: {ae_title: PACS, host: h}\n", "pacs.port: Field required"),
        ("routing: [{name: a, task: ct-volume}, {name: a, task: mr-volume}]\n", "repeated: a"),
        ("node: {tls: {certificate: c.pem}}\n", "node.tls.private_key: Field required"),
        ("node: {tls: {certificate: c, private_key: k, ca_file: x}}\n", "node.tls.ca_file"),
        ("node: {tls: {certificate: c, private_key: k, port: 11112}}\n", "tls.port 11112"),
        ("node: {http_token_env: 'not a name'}\n", "node.http_token_env"),
        ("node: {host: ''}\n", "node.host"),
    ],
)
def test_bad_configuration_names_key_and_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert expected in str(error.value)
    assert str(path) in str(error.value)


def test_serve_refuses_to_start_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("node:\n  stable_secs: 5\n")
    result = subprocess.run(
        [str(NODE_BIN), "serve", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "node.stable_secs" in result.stderr and str(path) in result.stderr


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("viewer_url", "expected"),
    [
        ("ohif.example/viewer?StudyInstanceUIDs={StudyInstanceUID}", "http:// or https://"),
        ("javascript:alert(1)//{StudyInstanceUID}", "http:// or https://"),
        ("https:///viewer?StudyInstanceUIDs={StudyInstanceUID}", "and a host"),
        ("https://ohif.example/viewer", "must contain {StudyInstanceUID}"),
        ("https://ohif.example/viewer?StudyInstanceUIDs={StudyInstanceUid}", "{StudyInstanceUID}"),
        (
            "https://ohif.example/viewer?study={StudyInstanceUID}&series={SeriesInstanceUID}",
            "remove {SeriesInstanceUID}",
        ),
    ],
)
def test_viewer_url_needs_http_a_host_and_the_study_placeholder(
    tmp_path: Path, viewer_url: str, expected: str
) -> None:
    path = tmp_path / "viewer.yaml"
    path.write_text(f"node: {{viewer_url: '{viewer_url}'}}\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert "node.viewer_url" in str(error.value) and expected in str(error.value)
    assert str(path) in str(error.value)


def test_viewer_url_defaults_to_none_and_keeps_a_good_template() -> None:
    assert load_settings(None).node.viewer_url is None
    template = "http://ohif.example:3000/viewer?StudyInstanceUIDs={StudyInstanceUID}"
    settings = parse_settings(f"node: {{viewer_url: '{template}'}}\n", "test")
    assert settings.node.viewer_url == template

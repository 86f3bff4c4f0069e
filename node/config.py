"""The node's configuration: one YAML file, validated once at start-up.

Every model forbids unknown keys so a typo stops the node with the key's dotted
path and the file, instead of being silently ignored.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from node.backoff import doubling_wait
from node.inference.budgets import MAX_VOLUME_SLICES

AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")]
Port = Annotated[int, Field(ge=1, le=65535)]
# What node.viewer_url must contain; the worklist puts the study's UID there.
VIEWER_PLACEHOLDER = "StudyInstanceUID"


class Task(StrEnum):
    """Tasks a routing rule can pick; defined once, used by routing, prompts and results."""

    CXR_REPORT = "cxr-report"
    CXR_LONGITUDINAL = "cxr-longitudinal"
    CT_VOLUME = "ct-volume"
    MR_VOLUME = "mr-volume"
    WSI = "wsi"
    LAB_REPORT = "lab-report"


class Output(StrEnum):
    SR = "sr"
    GSPS = "gsps"
    SC = "sc"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Peer(_Strict):
    ae_title: AETitle
    host: str | None = None  # None: any address


class TlsSettings(_Strict):
    """DICOM over TLS (PS3.15 Annex B): the node's certificate, and who may connect."""

    # PEM files; relative paths are taken from the working directory, as data_dir is.
    certificate: Path  # the node's certificate, then any intermediate certificates
    private_key: Path  # its key, unencrypted (the node can't prompt for a passphrase)
    # Set: every client must present a certificate that chains to one of these (PEM
    # bundle); None: clients connect without one, as with DCMTK's +tla.
    ca_certificates: Path | None = None
    # None: TLS replaces plain DICOM on node.port; a port: TLS listens there as well,
    # and plain DICOM stays on node.port.
    port: Port | None = None


class NodeSettings(_Strict):
    ae_title: AETitle = "MEDGEMMA"
    port: Port = 11112
    # The address DICOM listens on (0.0.0.0: every interface); loopback unless opened up.
    host: str = Field(default="127.0.0.1", min_length=1)
    http_port: Port = 8042
    http_host: str = Field(default="127.0.0.1", min_length=1)
    # The environment variable holding the HTTP bearer token, so the token stays out of
    # this file; unset or empty variable, or null: HTTP asks for no token.
    http_token_env: str | None = Field(
        default="MEDGEMMA_HTTP_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"
    )
    tls: TlsSettings | None = None  # None: plain DICOM only
    data_dir: Path = Path("data")
    database_url: str | None = None  # None: SQLite file under data_dir
    stable_seconds: float = Field(default=10.0, gt=0)
    # Events wake the watcher and workers; this is their longest sleep, a safety net.
    poll_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Empty list: any calling AE is accepted (logged); otherwise only these.
    allowed_peers: list[Peer] = Field(default_factory=list)
    # What happens to instances that arrive after a study's job has started.
    late_arrivals: Literal["rerun", "ignore"] = "rerun"
    max_attempts: int = Field(default=3, ge=1)  # model runs per job before it is failed
    retry_seconds: float = Field(default=30.0, gt=0)  # first wait after a failed run; doubles
    workers: int = Field(default=1, ge=1)
    # Each job slot's task in a process of its own (node.pipeline.offload); "auto": with
    # 4 or more cores (on fewer, copying images between processes costs more than it frees).
    task_processes: bool | Literal["auto"] = "auto"
    # Append-only JSON lines of associations, studies received, model runs and deliveries;
    # a relative path is under data_dir; None: no audit trail.
    audit_log: Path | None = Path("audit.jsonl")
    # Patient names and IDs in application logs and the audit trail; otherwise UIDs only.
    log_phi: bool = False
    # The worklist's "Open in viewer" link: a DICOMweb viewer's address with the placeholder
    # {StudyInstanceUID}; None: no link.
    viewer_url: str | None = None
    # Web origins (scheme://host[:port]) whose pages may call the HTTP API and DICOMweb
    # from a browser (CORS), e.g. a viewer served from another host; ["*"]: any; []: none.
    cors_origins: list[str] = Field(default_factory=list)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin == "*":
                continue
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port], without a path or "
                    'a trailing slash (or "*" for any origin)'
                )
        return origins

    @field_validator("viewer_url")
    @classmethod
    def _viewer_link(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("http://", "https://")) or not urlsplit(value).hostname:
            raise ValueError(f"must start with http:// or https:// and a host, got {value!r}")
        placeholders = set(re.findall(r"\{([^{}]*)\}", value))
        if VIEWER_PLACEHOLDER not in placeholders:
            raise ValueError(
                f"must contain {{{VIEWER_PLACEHOLDER}}} where the study's UID goes, got {value!r}"
            )
        unknown = sorted(placeholders - {VIEWER_PLACEHOLDER})
        if unknown:
            raise ValueError(
                f"only {{{VIEWER_PLACEHOLDER}}} is filled in; remove "
                + ", ".join(f"{{{name}}}" for name in unknown)
            )
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> NodeSettings:
        if self.tls is not None and self.tls.port in (self.port, self.http_port):
            raise ValueError(
                f"tls.port {self.tls.port} must differ from node.port and node.http_port "
                "(leave tls.port out to run TLS on node.port)"
            )
        return self

    @property
    def plain_port(self) -> int | None:
        """The port plain DICOM listens on; None when TLS has taken node.port."""
        return None if self.tls is not None and self.tls.port is None else self.port

    @property
    def tls_port(self) -> int | None:
        """The port DICOM over TLS listens on; None without TLS."""
        if self.tls is None:
            return None
        return self.tls.port if self.tls.port is not None else self.port

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def uses_task_processes(self) -> bool:
        if self.task_processes == "auto":
            return (os.cpu_count() or 1) >= 4
        return bool(self.task_processes)

    @property
    def resolved_audit_log(self) -> Path | None:
        return None if self.audit_log is None else self.data_dir / self.audit_log


class ModelSettings(_Strict):
    # transformers: MedGemma in this process; openai: MedGemma behind a server at url;
    # test: the tiny test checkpoint (demos and tests; every result says TEST MODEL). The
    # test checkpoint never stands in for missing MedGemma weights: those stop the node.
    engine: Literal["transformers", "openai", "test"] = "transformers"
    # transformers: a local MedGemma checkpoint; None: the Hugging Face cache for name.
    # test: where the test checkpoint is kept (built when absent); None: under data_dir.
    path: Path | None = None
    url: str | None = None  # for engine openai
    name: str = "google/medgemma-1.5-4b-it"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # None: each task's value from the official notebooks (report 600, volumes 2000)
    max_new_tokens: int | None = Field(default=None, ge=1, le=8192)
    # engine transformers: jobs run at once on one loaded model, their requests batched
    # into one generate call (1: one job at a time, no batching).
    batch_size: int = Field(default=1, ge=1, le=64)
    batch_wait_ms: float = Field(default=50.0, ge=0, le=5000)  # how long a batch waits to fill
    # engine transformers: jobs prepared while the model answers (each holds its inputs).
    prepare_ahead: int = Field(default=3, ge=0, le=16)
    # engine openai only, below.
    # Seconds without an answer before a request counts as failed: an 85-slice volume
    # with 2000 new tokens on a busy server takes minutes, so this is generous.
    timeout_seconds: float = Field(default=600.0, gt=0)
    # Further tries after a timeout, no connection, or HTTP 429/5xx, the wait doubling
    # from 1 s. Other 4xx are refused requests and are never retried. A job that still
    # fails is retried later by the job loop (node.max_attempts).
    retries: int = Field(default=2, ge=0, le=10)
    # Requests in flight at once from one worker process; more wait their turn. The
    # server batches what it gets, so a few keep it busy without queueing there.
    concurrency: int = Field(default=4, ge=1, le=64)
    # The environment variable holding the key sent as "Authorization: Bearer", so the
    # key stays out of this file and the logs; unset variable or null: no key sent.
    api_key_env: str | None = Field(default="OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # How images travel to the server. jpeg: what the official MedGemma serving container
    # sends (its IMAGE_INPUT_COMPRESSION_FORMAT, default jpeg, quality 95); lossy, under a
    # grey level of mean error at 95. png: lossless, but 2–3× the bytes (125 whole-slide
    # patches: over 100 MB a request) and ~10× the encoding time (bench/encoding.py).
    image_format: Literal["jpeg", "png"] = "jpeg"
    # JPEG only: 95 as the container; the notebooks send PIL's default 75 (smaller, lossier).
    jpeg_quality: int = Field(default=95, ge=1, le=100)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value


class WatchSettings(_Strict):
    """Polling an archive that can't push: recent studies the node hasn't got are pulled."""

    enabled: bool = False
    # None: the modalities the routing rules name (a rule without a modality adds none).
    modalities: list[Annotated[str, Field(pattern=r"^[A-Z0-9_]{1,16}$")]] | None = None
    interval_seconds: float = Field(default=60.0, gt=0)
    # Studies whose StudyDate is today or up to this many days before (0: today only).
    lookback_days: int = Field(default=1, ge=0)


class PacsSettings(_Strict):
    ae_title: AETitle
    host: str
    port: Port
    dicomweb_url: str | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)
    # How `process` and the watch pull a study. auto: WADO-RS with dicomweb_url, else
    # C-MOVE to this node's own AE (the PACS must know it as a destination).
    retrieve: Literal["auto", "wado", "c-get", "c-move"] = "auto"
    # A whole study must be here by then, or the pull fails and files nothing.
    retrieve_timeout_seconds: float = Field(default=600.0, gt=0)
    watch: WatchSettings = Field(default_factory=WatchSettings)

    @model_validator(mode="after")
    def _wado_needs_url(self) -> PacsSettings:
        if self.retrieve == "wado" and not self.dicomweb_url:
            raise ValueError("retrieve: wado needs dicomweb_url")
        return self


class PriorSettings(_Strict):
    """Comparison with the patient's earlier study, fetched from ``pacs``."""

    enabled: bool = True
    # Where a study routed to one of these tasks looks for a prior (chest radiographs).
    tasks: list[Task] = Field(default_factory=lambda: [Task.CXR_REPORT])
    window_days: int = Field(default=730, ge=1)
    # auto: WADO-RS when pacs.dicomweb_url is set, else C-MOVE to this node's own AE.
    retrieve: Literal["auto", "wado", "c-get", "c-move"] = "auto"
    timeout_seconds: float = Field(default=60.0, gt=0)
    cache_days: float = Field(default=7.0, gt=0)


class ImagingSettings(_Strict):
    # MedGemma 1.5's slice budget: 85 × 256 image tokens.
    max_slices: int = Field(default=MAX_VOLUME_SLICES, ge=1, le=MAX_VOLUME_SLICES)
    # Sagittal/coronal/tilted stacks: resample to axial (what the model was trained on)
    # or send them in their own plane, saying so in the job record.
    resample_axial: bool = False


class LocalizationSettings(_Strict):
    """Boxes for chest radiograph findings, asked with the official localization prompt."""

    enabled: bool = True
    # Empty: the findings the report names (negated ones left out); else always these labels.
    findings: list[str] = Field(default_factory=list)
    max_findings: int = Field(default=4, ge=1, le=20)  # one model call each


class Destination(_Strict):
    """A further place results go: by STOW-RS when ``dicomweb_url`` is set, else by C-STORE."""

    name: str = Field(min_length=1)
    ae_title: AETitle | None = None
    host: str | None = None
    port: Port | None = None
    dicomweb_url: str | None = None
    outputs: list[Output] | None = None  # None: the top-level outputs
    timeout_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _reachable(self) -> Destination:
        dimse = (self.ae_title, self.host, self.port)
        if self.dicomweb_url is None and None in dimse:
            raise ValueError(
                f"destination {self.name!r} needs dicomweb_url, or ae_title, host and port"
            )
        return self


class DeliverySettings(_Strict):
    """Sending results: retried with a doubling wait, then dead-lettered (re-triable)."""

    max_attempts: int = Field(default=12, ge=1)
    retry_seconds: float = Field(default=10.0, gt=0)  # first wait; doubles each attempt
    max_retry_seconds: float = Field(default=600.0, gt=0)
    # Besides pacs; each name must be unique and is what the job record lists as delivered.
    destinations: list[Destination] = Field(default_factory=list)

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, destinations: list[Destination]) -> list[Destination]:
        names = [d.name for d in destinations]
        if "pacs" in names or len(set(names)) != len(names):
            raise ValueError("destination names must be unique and not 'pacs'")
        return destinations

    def wait_after(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed delivery."""
        return doubling_wait(self.retry_seconds, attempts, ceiling=self.max_retry_seconds)


class Match(_Strict):
    """All given fields must match; list fields match any of their values (case-insensitive)."""

    modality: list[str] | None = None
    body_part: list[str] | None = None
    sop_class: list[str] | None = None
    image_type: list[str] | None = None  # each value must appear in ImageType
    series_description: str | None = None  # regex, searched case-insensitively
    calling_ae: list[str] | None = None

    @field_validator("series_description")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from e
        return value


class Rule(_Strict):
    name: str
    match: Match = Field(default_factory=Match)
    task: Task
    # Keep what the model saw for this rule's jobs under data_dir/inputs/job-N.
    save_inputs: bool = False


def default_routing() -> list[Rule]:
    """What a file without a ``routing`` section gets: chest radiographs, CT, MR."""
    return [
        Rule(
            name="chest radiograph",
            match=Match(modality=["CR", "DX"], body_part=["CHEST"]),
            task=Task.CXR_REPORT,
        ),
        Rule(name="ct", match=Match(modality=["CT"]), task=Task.CT_VOLUME),
        Rule(name="mr", match=Match(modality=["MR"]), task=Task.MR_VOLUME),
        Rule(
            name="whole slide",
            match=Match(sop_class=["VLWholeSlideMicroscopyImageStorage"]),
            task=Task.WSI,
        ),
        Rule(
            name="lab report",
            match=Match(modality=["DOC"], series_description=r"\blab"),
            task=Task.LAB_REPORT,
        ),
    ]


class Settings(_Strict):
    node: NodeSettings = Field(default_factory=NodeSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    pacs: PacsSettings | None = None
    imaging: ImagingSettings = Field(default_factory=ImagingSettings)
    priors: PriorSettings = Field(default_factory=PriorSettings)
    localization: LocalizationSettings = Field(default_factory=LocalizationSettings)
    outputs: list[Output] = Field(default_factory=lambda: [Output.SR, Output.GSPS])
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    routing: list[Rule] = Field(default_factory=default_routing)

    @field_validator("routing")
    @classmethod
    def _unique_rule_names(cls, rules: list[Rule]) -> list[Rule]:
        names = [rule.name for rule in rules]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(repeated)}")
        return rules


class ConfigError(Exception):
    """A configuration file that can't be used; the message names the file and the key."""


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def parse_settings(text: str, source: str) -> Settings:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, source)) from e


def default_config_text() -> str:
    return resources.files("node").joinpath("defaults.yaml").read_text(encoding="utf-8")


def load_settings(path: Path | None) -> Settings:
    """Read and validate a configuration file; None gives the embedded defaults."""
    if path is None:
        return parse_settings(default_config_text(), "embedded defaults")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from e
    return parse_settings(text, str(path))

"""The served-model engine against a real OpenAI-compatible server over loopback.

The server (tests/openai_server.py) answers with the test checkpoint in its own
``TransformersEngine``, so what goes over HTTP is compared with what the same model
answers in process: same prompt, same images in the same order, same answer.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin
from pydicom.data import get_testdata_file

from fixtures.series import write_fast_ct_series
from node.config import ConfigError, ModelSettings, parse_settings
from node.imaging.radiograph import radiograph_to_image
from node.imaging.volume import series_to_volume_input
from node.inference import prompts
from node.inference.answers import final_answer, report_sections
from node.inference.engine import ModelLoadError, TransformersEngine, load_engine
from node.inference.request import EngineError, Prompt
from node.inference.served import ImageFormat, OpenAIEngine, image_data_url
from node.testing.checkpoint import REPORT_ANSWER, VOLUME_ANSWER
from tests.openai_server import OpenAIServer, decode_image_url
from tests.peers import free_port

MODEL = "google/medgemma-1.5-4b-it"
FAST_RETRY = 0.05  # seconds; the engine's own first wait is 1 s
# JPEG quality 95 against the source, in grey levels, chosen by hand with room to spare:
# bench/encoding.py measures a mean of 0.6 and a worst pixel of 9 on this radiograph, and
# 0.7 and 21 on a CT slice (whose 4:2:0 encoding, 1.65 and 106, must fail the CT bound).
Q95_MEAN_ERROR = 1.0
Q95_RADIOGRAPH_MAX_ERROR = 16
Q95_CT_MAX_ERROR = 40


@pytest.fixture(scope="module")
def in_process(test_model: Path) -> TransformersEngine:
    return TransformersEngine(test_model)


@pytest.fixture
def server(in_process: TransformersEngine, test_model: Path) -> Iterator[OpenAIServer]:
    peer = OpenAIServer(in_process, test_model, model_name=MODEL).start()
    yield peer
    peer.stop()


def _engine(
    server: OpenAIServer,
    *,
    retries: int = 2,
    concurrency: int = 4,
    timeout: float = 60.0,
    image_format: ImageFormat = "jpeg",
) -> OpenAIEngine:
    return OpenAIEngine(
        server.url,
        model=MODEL,
        timeout=timeout,
        retries=retries,
        concurrency=concurrency,
        retry_wait=FAST_RETRY,
        image_format=image_format,
    )


def _noise(seed: int, size: tuple[int, int] = (96, 96), mode: str = "L") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = (3,) if mode == "RGB" else ()
    pixels = rng.integers(0, 256, size=(size[1], size[0], *channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode=mode)


def _same_content(sent: Prompt, seen: Prompt) -> None:
    """Text equal, images pixel-equal (a PNG data URL is lossless), in the same places."""
    assert seen.system == sent.system
    assert seen.max_new_tokens == sent.max_new_tokens
    assert len(seen.content) == len(sent.content)
    for ours, theirs in zip(sent.content, seen.content, strict=True):
        if isinstance(ours, Image.Image):
            assert isinstance(theirs, Image.Image)
            assert theirs.mode == ours.mode and theirs.size == ours.size
            assert np.array_equal(np.asarray(theirs), np.asarray(ours))
        else:
            assert theirs == ours


# --- the same answers as in process ------------------------------------------------------------


def test_chest_report_over_http_is_the_in_process_answer(
    server: OpenAIServer, in_process: TransformersEngine, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = prompts.cxr_report_prompt(_noise(1, (640, 480)))
    engine = _engine(server, image_format="png")
    with caplog.at_level(logging.INFO, logger="node.inference.served"):
        answer = engine.generate(prompt)
    assert answer == in_process.generate(prompt) == REPORT_ANSWER
    assert report_sections(answer)["IMPRESSION"] == "No acute cardiopulmonary abnormality."
    assert not engine.is_test_model and engine.label == MODEL
    (chat,) = server.chats
    assert chat.path == "/v1/chat/completions"
    assert chat.body["model"] == MODEL
    assert chat.body["temperature"] == 0
    assert chat.body["max_tokens"] == prompts.REPORT_MAX_NEW_TOKENS
    assert "seed" not in chat.body
    system, user = chat.body["messages"]
    assert system == {"role": "system", "content": prompts.REPORT_SYSTEM}
    assert [part["type"] for part in user["content"]] == ["image_url", "text"]
    assert chat.prompt is not None
    _same_content(prompt, chat.prompt)
    assert "Authorization" not in chat.headers
    (line,) = [r.getMessage() for r in caplog.records if r.name == "node.inference.served"]
    assert re.search(r": 1 images, \d+ prompt tokens, \d+ new tokens in", line), line


def test_volume_slices_arrive_interleaved_with_their_labels(
    server: OpenAIServer, in_process: TransformersEngine
) -> None:
    slices = [_noise(seed, (80, 64)) for seed in range(5)] + [_noise(9, (80, 64), "RGB")]
    question = prompts.volume_finding_question("pleural effusion", "CT")
    prompt = prompts.volume_prompt(slices, "CT", question=question, context="Dyspnoea.")
    answer = _engine(server, image_format="png").generate(prompt)
    assert answer == in_process.generate(prompt) == VOLUME_ANSWER
    assert final_answer(answer) == "no"
    (chat,) = server.chats
    (user,) = chat.body["messages"]  # no system turn in the volume prompt
    kinds = [part["type"] for part in user["content"]]
    assert kinds == ["text"] + ["image_url", "text"] * len(slices) + ["text"]
    labels = [part["text"] for part in user["content"][2:-1:2]]
    assert labels == [f"SLICE {n}" for n in range(1, len(slices) + 1)]
    assert chat.prompt is not None
    _same_content(prompt, chat.prompt)
    assert chat.prompt.content == prompt.content  # PIL compares pixels, mode and size


def test_a_follow_up_sends_the_whole_conversation(
    server: OpenAIServer, in_process: TransformersEngine
) -> None:
    """Earlier turns go first, each user message with its own images, the answer after it."""
    first, second, third = _noise(11, (64, 48)), _noise(12, (56, 40), "RGB"), _noise(13)
    question = "Is there a pleural effusion?"
    prompt = (
        prompts.cxr_report_prompt(first)
        .follow_up(REPORT_ANSWER, ["Compare with the prior:", second], 300)
        .follow_up("Stable.", [third, question], 50)
    )
    answer = _engine(server, image_format="png").generate(prompt)
    assert answer == in_process.generate(prompt)
    (chat,) = server.chats
    messages = chat.body["messages"]
    roles = [message["role"] for message in messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == prompts.REPORT_SYSTEM
    assert [messages[2]["content"], messages[4]["content"]] == [REPORT_ANSWER, "Stable."]
    assert chat.body["max_tokens"] == 50  # the question's own
    users = [messages[1]["content"], messages[3]["content"], messages[5]["content"]]
    assert [[part["type"] for part in parts] for parts in users] == [
        ["image_url", "text"],
        ["text", "image_url"],
        ["image_url", "text"],
    ]
    assert users[1][0]["text"] == "Compare with the prior:" and users[2][1]["text"] == question
    sent = [users[0][0], users[1][1], users[2][0]]
    for part, image in zip(sent, [first, second, third], strict=True):
        decoded = decode_image_url(part["image_url"]["url"])
        assert decoded.mode == image.mode and decoded.size == image.size
        assert np.array_equal(np.asarray(decoded), np.asarray(image))
    assert chat.prompt == prompt  # rebuilt by the server: history, answers, images


def test_thinking_trace_is_dropped(server: OpenAIServer) -> None:
    server.answer_prefix = "Let me look at the lungs first.<unused95>\n"
    answer = _engine(server).generate(prompts.cxr_report_prompt(_noise(2)))
    assert answer == REPORT_ANSWER


def test_batch_answers_come_back_in_order(server: OpenAIServer) -> None:
    volume = prompts.volume_prompt([_noise(3), _noise(4)], "MR")
    report = prompts.cxr_report_prompt(_noise(5))
    answers = _engine(server).generate_batch([report, volume, report])
    assert answers == [REPORT_ANSWER, VOLUME_ANSWER, REPORT_ANSWER]
    assert len(server.chats) == 3


# --- image encoding ------------------------------------------------------------------------


def _errors(source: Image.Image, decoded: Image.Image) -> tuple[float, int]:
    """Mean and largest absolute difference, in grey levels, over pixels and channels."""
    assert decoded.mode == source.mode and decoded.size == source.size
    difference = np.abs(np.asarray(decoded, np.int16) - np.asarray(source, np.int16))
    return float(difference.mean()), int(difference.max())


def test_images_go_as_jpeg_quality_95_by_default(server: OpenAIServer, tmp_path: Path) -> None:
    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    assert path is not None
    source = radiograph_to_image(path).image
    engine = load_engine(_settings(server.url, name=MODEL), tmp_path)
    assert engine.generate(prompts.cxr_report_prompt(source)) == REPORT_ANSWER
    (chat,) = server.chats
    _, user = chat.body["messages"]
    url = user["content"][0]["image_url"]["url"]
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(url.removeprefix(prefix)))) as jpeg:
        assert jpeg.format == "JPEG"
        assert JpegImagePlugin.get_sampling(jpeg) == 0  # 4:4:4: chroma at full resolution
    assert chat.prompt is not None
    (seen,) = chat.prompt.images
    mean, worst = _errors(source, seen)
    assert 0 < mean < Q95_MEAN_ERROR, mean  # lossy, but little
    assert worst <= Q95_RADIOGRAPH_MAX_ERROR, worst


def test_jpeg_keeps_a_ct_slice_s_windows_apart(tmp_path: Path) -> None:
    """4:4:4, because R, G and B are three HU windows: 4:2:0 smears them at every edge."""
    volume = series_to_volume_input(write_fast_ct_series(tmp_path, 5))
    source = volume.images[0]
    assert source.mode == "RGB"
    mean, worst = _errors(source, decode_image_url(image_data_url(source)))
    assert mean < Q95_MEAN_ERROR and worst <= Q95_CT_MAX_ERROR, (mean, worst)
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", quality=95)  # PIL's (and libjpeg's) default 4:2:0
    mean_420, worst_420 = _errors(source, Image.open(buffer))
    assert mean_420 > Q95_MEAN_ERROR and worst_420 > Q95_CT_MAX_ERROR, (mean_420, worst_420)
    lossless = decode_image_url(image_data_url(source, "png"))
    assert _errors(source, lossless) == (0.0, 0)
    q75 = decode_image_url(image_data_url(source, "jpeg", 75))
    assert _errors(source, q75)[0] > mean  # the quality is used


def test_jpeg_refuses_images_it_cannot_hold() -> None:
    image = _noise(14, mode="RGB").convert("RGBA")
    with pytest.raises(ValueError, match=r"mode 'RGBA' \(set model.image_format to png\)"):
        image_data_url(image, "jpeg")
    assert image_data_url(image, "png").startswith("data:image/png;base64,")


# --- retries, timeouts, the concurrency limit ------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [
        HTTPStatus.SERVICE_UNAVAILABLE,
        HTTPStatus.TOO_MANY_REQUESTS,
        HTTPStatus.BAD_GATEWAY,
        HTTPStatus.REQUEST_TIMEOUT,  # the server's own "request timeout": worth a second try
    ],
)
def test_busy_server_is_retried_until_it_answers(
    server: OpenAIServer, status: HTTPStatus, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail_next(2, status)
    answer = _engine(server, retries=2).generate(prompts.cxr_report_prompt(_noise(6)))
    assert answer == REPORT_ANSWER
    assert len(server.chats) == 3
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "node.inference.served" and r.levelno == logging.WARNING
    ]
    assert [f"HTTP {status.value}" in w and "attempt" in w for w in warnings] == [True, True]


def test_without_retries_a_busy_server_fails_the_request(server: OpenAIServer) -> None:
    server.fail_next(1)
    engine = _engine(server, retries=0)
    with pytest.raises(EngineError) as failed:
        engine.generate(prompts.cxr_report_prompt(_noise(6)))
    message = str(failed.value)
    assert f"{server.url}/chat/completions answered HTTP 503" in message
    assert "gave up after 1 attempt (model.retries is 0)" in message
    assert len(server.chats) == 1


def test_too_many_failures_give_up_after_the_retries(server: OpenAIServer) -> None:
    server.fail_next(5, HTTPStatus.INTERNAL_SERVER_ERROR)
    with pytest.raises(EngineError, match=r"HTTP 500.*gave up after 3 attempts"):
        _engine(server, retries=2).generate(prompts.cxr_report_prompt(_noise(6)))
    assert len(server.chats) == 3


@pytest.mark.parametrize("status", [HTTPStatus.BAD_REQUEST, HTTPStatus.UNPROCESSABLE_ENTITY])
def test_a_refused_request_is_not_retried(server: OpenAIServer, status: HTTPStatus) -> None:
    server.fail_next(1, status)
    with pytest.raises(EngineError) as failed:
        _engine(server, retries=2).generate(prompts.cxr_report_prompt(_noise(6)))
    message = str(failed.value)
    assert f"{server.url}/chat/completions answered HTTP {status.value}" in message
    assert '"message": "scripted"' in message  # the server's own words
    assert "not retried" in message
    assert len(server.chats) == 1


def test_an_unknown_model_name_is_refused_by_the_server(server: OpenAIServer) -> None:
    engine = OpenAIEngine(server.url, model="google/medgemma-27b-it", retries=2)
    with pytest.raises(EngineError, match=r"HTTP 400.*medgemma-27b-it.*not retried"):
        engine.generate(prompts.cxr_report_prompt(_noise(6)))
    assert len(server.chats) == 1


def test_no_answer_within_the_timeout_fails_naming_it(server: OpenAIServer) -> None:
    server.delay_next(1, 5.0)
    engine = _engine(server, retries=0, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(EngineError) as failed:
        engine.generate(prompts.cxr_report_prompt(_noise(6)))
    assert time.monotonic() - started < 4.0
    message = str(failed.value)
    assert f"no answer from {server.url}/chat/completions within 0.5 s" in message
    assert "model.timeout_seconds" in message


def test_a_timed_out_request_is_retried(server: OpenAIServer) -> None:
    server.delay_next(1, 30.0)  # woken when the server stops
    # Long enough for the second try's generation on a busy 2-core machine.
    engine = _engine(server, retries=1, timeout=2.0)
    answer = engine.generate(prompts.cxr_report_prompt(_noise(6)))
    assert answer == REPORT_ANSWER
    assert len(server.chats) == 2


def test_no_more_requests_in_flight_than_the_concurrency(server: OpenAIServer) -> None:
    server.delay = 0.3  # long enough that requests sent together overlap at the server
    engine = _engine(server, concurrency=2)
    answers: list[str] = []
    errors: list[Exception] = []

    def ask(seed: int) -> None:
        try:
            answers.append(engine.generate(prompts.cxr_report_prompt(_noise(seed))))
        except EngineError as e:
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert answers == [REPORT_ANSWER] * 6
    assert len(server.chats) == 6
    assert server.max_in_flight == 2  # reached, never passed


def test_unlimited_enough_concurrency_does_overlap(server: OpenAIServer) -> None:
    """The check above can fail: without the limit, the same requests do overlap."""
    server.delay = 0.3
    engine = _engine(server, concurrency=6)
    report = prompts.cxr_report_prompt(_noise(7))
    assert engine.generate_batch([report] * 6) == [REPORT_ANSWER] * 6
    assert server.max_in_flight > 2


# --- start-up: load_engine and the served names -------------------------------------------------


def _settings(url: str, **keys: object) -> ModelSettings:
    return ModelSettings.model_validate({"engine": "openai", "url": url, **keys})


def test_load_engine_checks_the_served_model(server: OpenAIServer, tmp_path: Path) -> None:
    engine = load_engine(_settings(server.url, name=MODEL, retries=0), tmp_path)
    assert isinstance(engine, OpenAIEngine)
    assert engine.generate(prompts.cxr_report_prompt(_noise(8))) == REPORT_ANSWER


def test_a_served_test_checkpoint_is_labelled_test_model(
    server: OpenAIServer, tmp_path: Path
) -> None:
    """The server lists the test checkpoint's directory as its root (as vLLM lists what it
    loaded): the node says TEST MODEL, as it does in process."""
    engine = load_engine(_settings(server.url, name=MODEL), tmp_path)
    assert engine.is_test_model and engine.label == f"TEST MODEL ({MODEL})"
    checkpoint = server.root
    server.root = MODEL  # a real checkpoint: a repository id, or a directory without the marker
    try:
        real = load_engine(_settings(server.url, name=MODEL), tmp_path)
    finally:
        server.root = checkpoint
    assert not real.is_test_model and real.label == MODEL


def test_a_model_the_server_does_not_serve_stops_the_start(
    server: OpenAIServer, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError) as failed:
        load_engine(_settings(server.url, name="google/medgemma-27b-it"), tmp_path)
    message = str(failed.value)
    assert server.url in message
    assert "'google/medgemma-27b-it' (model.name)" in message
    assert f"it serves: '{MODEL}'" in message
    assert server.chats == []


def test_a_server_without_a_model_list_is_used_with_a_warning(
    server: OpenAIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.list_models = False
    engine = load_engine(_settings(server.url, name=MODEL), tmp_path)
    assert f"{server.url}/models answered HTTP 404" in caplog.text
    assert engine.generate(prompts.cxr_report_prompt(_noise(8))) == REPORT_ANSWER


def test_a_dead_url_starts_with_a_warning_and_fails_requests(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    engine = load_engine(_settings(url, retries=1), tmp_path)
    assert f"cannot reach {url}/models" in caplog.text
    assert isinstance(engine, OpenAIEngine)
    with pytest.raises(EngineError, match=f"cannot reach the model endpoint {url}/chat/comp"):
        engine.generate(prompts.cxr_report_prompt(_noise(8)))


def test_the_url_is_needed_and_must_be_http(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model.url"):
        load_engine(ModelSettings(engine="openai"), tmp_path)
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        ModelSettings(engine="openai", url="localhost:8000/v1")


def test_the_api_key_comes_from_the_environment_and_is_never_logged(
    in_process: TransformersEngine,
    test_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = "sk-test-5f0c2a9e"
    peer = OpenAIServer(in_process, test_model, model_name=MODEL, api_key=key).start()
    try:
        settings = _settings(peer.url, api_key_env="MEDGEMMA_NODE_TEST_KEY")
        monkeypatch.delenv("MEDGEMMA_NODE_TEST_KEY", raising=False)
        with pytest.raises(ModelLoadError, match=r"HTTP 401.*model.api_key_env"):
            load_engine(settings, tmp_path)
        monkeypatch.setenv("MEDGEMMA_NODE_TEST_KEY", key)
        with caplog.at_level(logging.DEBUG):
            engine = load_engine(settings, tmp_path)
            assert engine.generate(prompts.cxr_report_prompt(_noise(9))) == REPORT_ANSWER
        (chat,) = peer.chats
        assert chat.headers["Authorization"] == f"Bearer {key}"
        assert "key from $MEDGEMMA_NODE_TEST_KEY" in caplog.text
        assert key not in caplog.text
    finally:
        peer.stop()


# --- settings ---------------------------------------------------------------------------------


def test_served_settings_defaults_and_limits() -> None:
    settings = ModelSettings()
    assert settings.timeout_seconds == 600
    assert settings.retries == 2
    assert settings.concurrency == 4
    assert settings.api_key_env == "OPENAI_API_KEY"
    assert ModelSettings(api_key_env=None).api_key_env is None
    for bad in ({"timeout_seconds": 0}, {"retries": -1}, {"concurrency": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ModelSettings.model_validate(bad)
    with pytest.raises(ValueError, match="api_key_env"):
        ModelSettings(api_key_env="not a variable")
    assert (settings.image_format, settings.jpeg_quality) == ("jpeg", 95)


@pytest.mark.parametrize(
    ("yaml", "key"),
    [
        ("image_format: webp", "model.image_format"),
        ("image_format: JPEG", "model.image_format"),
        ("jpeg_quality: 0", "model.jpeg_quality"),
        ("jpeg_quality: 101", "model.jpeg_quality"),
    ],
)
def test_an_unknown_image_encoding_stops_the_node_naming_the_key(yaml: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"node.yaml:\n  {re.escape(key)}: "):
        parse_settings(f"model: {{engine: openai, {yaml}}}\n", "node.yaml")


def test_the_engine_checks_its_encoding_too() -> None:
    with pytest.raises(ValueError, match="image_format must be 'jpeg' or 'png', got 'webp'"):
        OpenAIEngine("http://127.0.0.1:1/v1", model=MODEL, image_format="webp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="jpeg_quality must be 1 to 100, got 0"):
        OpenAIEngine("http://127.0.0.1:1/v1", model=MODEL, jpeg_quality=0)

"""MedGemma behind an OpenAI-compatible chat completions server (vLLM, SGLang).

Same conversation, same images in the same order as the in-process engine; greedy
decoding. Images travel as data URLs: JPEG quality 95 by default, as the official MedGemma
serving container sends them (lossy: under a grey level of mean error), or lossless PNG,
2–3× the bytes and ~10× the encoding time (``bench/encoding.py``).
Requests that may succeed on a second try (no connection, a timeout, HTTP 429 or 5xx)
are retried with a short doubling wait; a refused request (any other 4xx) is not.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from node.backoff import doubling_wait
from node.inference.answers import strip_thinking
from node.inference.request import TEST_MODEL_LABEL, Content, EngineError, Prompt
from node.testing.checkpoint import is_test_model

logger = logging.getLogger(__name__)

OPENAI_TIMEOUT_SECONDS = 600.0
OPENAI_RETRIES = 2
OPENAI_CONCURRENCY = 4
CHAT_COMPLETIONS = "/chat/completions"
MODELS = "/models"
# The start-up check only lists names: it never waits as long as a generation may.
MODELS_TIMEOUT_SECONDS = 30.0
# First wait before a retry; doubles each time. Short: a server that is down for longer
# fails the job, and the job loop's own retries (node.retry_seconds) take over.
RETRY_WAIT_SECONDS = 1.0
ERROR_DETAIL_CHARS = 500

# The finish reason of an answer cut at max_tokens.
FINISH_LENGTH = "length"

ImageFormat = Literal["jpeg", "png"]
# The official serving container's IMAGE_INPUT_COMPRESSION_FORMAT and quality defaults.
DEFAULT_IMAGE_FORMAT: ImageFormat = "jpeg"
DEFAULT_JPEG_QUALITY = 95
# Chroma at full resolution (4:4:4), not PIL's and libjpeg's default 4:2:0 (which the
# container's cv2.imencode also gets). 4:2:0 costs nothing on grey images (radiographs,
# MR), but a CT slice's three channels are three windows of the same HU and 4:2:0 blurs
# their differences at every edge: on bench/encoding.py's CT at q95 the mean error goes
# from 0.7 to 1.65 levels and the worst pixel from ~20 to ~100 levels off; 4:4:4 costs
# ~1.6× the bytes there, ~1.1× on whole-slide patches.
JPEG_SUBSAMPLING = 0  # PIL's code for 4:4:4
# Lossless either way; level 1 is ~10× faster than the default level 6.
PNG_COMPRESS_LEVEL = 1
# Modes a JPEG holds as they are; the node's images are all RGB (or L in tests).
JPEG_MODES = ("L", "RGB")


def retryable_status(code: int) -> bool:
    """Worth a second try: the server is busy, restarting, or its proxy timed out.

    408 is the server's own "request timeout". Every other 4xx says this request itself
    is refused (too many tokens, a bad image, an unknown model) and would be again.
    """
    return code in (HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS) or code >= 500


class ServedModelError(EngineError):
    """The server is up but can't serve ``model.name`` to this node (wrong name, refused key)."""


@dataclass(frozen=True)
class _Failure:
    """One failed attempt: what to say, and whether another attempt might succeed."""

    message: str
    retryable: bool


class OpenAIEngine:
    """MedGemma served by vLLM or any OpenAI-compatible chat completions endpoint.

    Thread-safe: at most ``concurrency`` requests from this engine are in flight at once;
    more callers wait for a slot (not counted against ``timeout``).
    """

    def __init__(
        self,
        url: str,
        *,
        model: str,
        timeout: float = OPENAI_TIMEOUT_SECONDS,
        retries: int = OPENAI_RETRIES,
        concurrency: int = OPENAI_CONCURRENCY,
        api_key: str | None = None,
        retry_wait: float = RETRY_WAIT_SECONDS,
        image_format: ImageFormat = DEFAULT_IMAGE_FORMAT,
        jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    ) -> None:
        if timeout <= 0 or retries < 0 or concurrency < 1 or retry_wait < 0:
            raise ValueError(
                f"timeout must be > 0, retries >= 0, concurrency >= 1 and retry_wait >= 0; "
                f"got {timeout}, {retries}, {concurrency} and {retry_wait}"
            )
        _check_encoding(image_format, jpeg_quality)
        base = url.rstrip("/")
        base = base.removesuffix(CHAT_COMPLETIONS)
        self._base = base
        self._url = base + CHAT_COMPLETIONS
        self._model = model
        self._timeout = timeout
        self._retries = retries
        self._retry_wait = retry_wait
        self._concurrency = concurrency
        self._image_format = image_format
        self._jpeg_quality = jpeg_quality
        self._slots = threading.BoundedSemaphore(concurrency)
        self.is_test_model = False  # until check_model finds the node's test checkpoint served
        # Never logged, never in an error message.
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    @property
    def label(self) -> str:
        return f"{TEST_MODEL_LABEL} ({self._model})" if self.is_test_model else self._model

    @property
    def url(self) -> str:
        """The chat completions endpoint."""
        return self._url

    @property
    def models_url(self) -> str:
        return self._base + MODELS

    # --- start-up ---------------------------------------------------------------------------

    def served_models(self) -> list[str] | None:
        """The names ``GET {base}/models`` lists; None where it can't be asked (logged)."""
        listing = self._listing()
        return None if listing is None else [str(entry["id"]) for entry in listing]

    def _listing(self) -> list[dict[str, Any]] | None:
        """The entries ``GET {base}/models`` lists; None where it can't be asked (logged).

        Raises ServedModelError where the server refuses this node's key: that needs a
        person, not a retry.
        """
        request = urllib.request.Request(self.models_url, headers=self._headers, method="GET")
        try:
            with urllib.request.urlopen(request, timeout=MODELS_TIMEOUT_SECONDS) as response:
                listing = json.load(response)
        except urllib.error.HTTPError as e:
            if e.code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
                raise ServedModelError(
                    f"{self.models_url} answered HTTP {e.code}: the server wants an API key "
                    "this node doesn't send or has wrong (see model.api_key_env)"
                ) from e
            logger.warning(
                "%s answered HTTP %d: cannot check that it serves %s; going on",
                self.models_url,
                e.code,
                self._model,
            )
            return None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            # A server started beside the node takes minutes to load the weights; jobs
            # sent before it is up fail and are retried by the job loop.
            logger.warning(
                "cannot reach %s to check that it serves %s (%s); going on",
                self.models_url,
                self._model,
                getattr(e, "reason", e),
            )
            return None
        except json.JSONDecodeError:
            logger.warning("%s did not answer with JSON; going on", self.models_url)
            return None
        try:
            entries = [dict(entry) for entry in listing["data"]]
            if not all("id" in entry for entry in entries):
                raise KeyError("id")
            return entries
        except (KeyError, TypeError, ValueError) as e:
            logger.warning("%s answered without data[].id (%s); going on", self.models_url, e)
            return None

    def check_model(self) -> None:
        """Stop at start-up when the server is up but doesn't serve ``model``; find out
        whether what it serves is the node's test checkpoint.

        vLLM lists the directory it loaded as ``root``: when that is the test checkpoint
        and this node can see it (the same host or a shared volume), every result says
        TEST MODEL, as it does in process.
        """
        listing = self._listing()
        if listing is None:
            return
        served = [str(entry["id"]) for entry in listing]
        if self._model not in served:
            raise ServedModelError(
                f"{self._base} does not serve {self._model!r} (model.name); it serves: "
                f"{', '.join(map(repr, served)) or 'nothing'}. Set model.name to one of "
                f"those, or start the server with --served-model-name {self._model}"
            )
        entry = listing[served.index(self._model)]
        roots = {str(entry[key]) for key in ("root", "id") if entry.get(key)}
        self.is_test_model = any(_is_local_test_model(root) for root in roots)
        if self.is_test_model:
            logger.warning(
                "%s serves the node's test checkpoint as %s: results are labelled TEST MODEL",
                self._base,
                self._model,
            )
        logger.info("%s serves %s", self._base, self._model)

    # --- generation -------------------------------------------------------------------------

    def request_body(self, prompt: Prompt) -> dict[str, Any]:
        """The chat completions body: the whole conversation, the question last.

        An optional system message, then for each earlier turn the user message and the
        model's answer as an assistant message, then the user message to answer now.
        """
        messages: list[dict[str, Any]] = []
        if prompt.system:
            # The server's Gemma 3 chat template folds it into the first user turn, as the
            # processor does in process.
            messages.append({"role": "system", "content": prompt.system})
        for turn in prompt.history:
            messages.append({"role": "user", "content": self._parts(turn.content)})
            messages.append({"role": "assistant", "content": turn.answer})
        messages.append({"role": "user", "content": self._parts(prompt.content)})
        # No seed: with temperature 0 the server decodes greedily and a seed changes nothing.
        return {
            "model": self._model,
            "messages": messages,
            "max_tokens": prompt.max_new_tokens,
            "temperature": 0,  # greedy, as do_sample=False in process
        }

    def _parts(self, content: Content) -> list[dict[str, Any]]:
        """One user message's content parts: text as it is, images as data URLs."""
        parts: list[dict[str, Any]] = []
        for part in content:
            if isinstance(part, Image.Image):
                url = image_data_url(part, self._image_format, self._jpeg_quality)
                parts.append({"type": "image_url", "image_url": {"url": url}})
            else:
                parts.append({"type": "text", "text": part})
        return parts

    def generate(self, prompt: Prompt) -> str:
        started = time.monotonic()
        body = json.dumps(self.request_body(prompt)).encode("utf-8")
        reply = self._post_with_retries(body)
        text = self._content(reply)
        usage = reply.get("usage")
        if not isinstance(usage, dict):
            usage = {}  # optional in the API; vLLM and SGLang send it
        logger.info(
            "%s at %s: %d images, %s prompt tokens, %s new tokens in %.1f s",
            self._model,
            self._url,
            len(prompt.images),
            usage.get("prompt_tokens", "?"),
            usage.get("completion_tokens", "?"),
            time.monotonic() - started,
        )
        return strip_thinking(text)

    def generate_batch(self, prompts: Sequence[Prompt]) -> list[str]:
        """Answers to ``prompts`` in order, requested side by side: the server batches them."""
        if len(prompts) <= 1:
            return [self.generate(prompt) for prompt in prompts]
        workers = min(len(prompts), self._concurrency)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai") as pool:
            return list(pool.map(self.generate, prompts))  # the first failure, in order

    def _post_with_retries(self, body: bytes) -> dict[str, Any]:
        attempts = self._retries + 1
        attempt = 1
        while True:
            outcome = self._post(body)
            if not isinstance(outcome, _Failure):
                return outcome
            if not outcome.retryable:
                raise EngineError(outcome.message)
            if attempt == attempts:
                raise EngineError(
                    f"{outcome.message}; gave up after {attempts} "
                    f"attempt{'s' if attempts > 1 else ''} (model.retries is {self._retries})"
                )
            wait = doubling_wait(self._retry_wait, attempt)
            logger.warning(
                "%s; attempt %d of %d, next in %.1f s", outcome.message, attempt, attempts, wait
            )
            time.sleep(wait)  # outside the slot: a waiting retry holds no request slot
            attempt += 1

    def _post(self, body: bytes) -> dict[str, Any] | _Failure:
        request = urllib.request.Request(self._url, data=body, headers=self._headers)
        with self._slots:
            try:
                with urllib.request.urlopen(request, timeout=self._timeout) as response:
                    reply = json.load(response)
            except urllib.error.HTTPError as e:
                detail = e.read(ERROR_DETAIL_CHARS).decode("utf-8", errors="replace")
                message = f"{self._url} answered HTTP {e.code}: {detail}"
                if retryable_status(e.code):
                    return _Failure(message, retryable=True)
                return _Failure(
                    message + " (not retried: the server refused this request, and would again)",
                    retryable=False,
                )
            except TimeoutError:
                return _Failure(
                    f"no answer from {self._url} within {self._timeout:g} s "
                    "(model.timeout_seconds)",
                    retryable=True,
                )
            except (urllib.error.URLError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, TimeoutError):  # timed out while connecting
                    return _Failure(
                        f"no connection to {self._url} within {self._timeout:g} s "
                        "(model.timeout_seconds)",
                        retryable=True,
                    )
                return _Failure(
                    f"cannot reach the model endpoint {self._url}: {reason}", retryable=True
                )
            except http.client.HTTPException as e:  # the connection broke mid-answer
                return _Failure(
                    f"{self._url} broke off its answer: {type(e).__name__}: {e}", retryable=True
                )
            except json.JSONDecodeError as e:
                return _Failure(f"{self._url} did not answer with JSON: {e}", retryable=False)
        if not isinstance(reply, dict):
            return _Failure(
                f"{self._url} answered with a JSON {type(reply).__name__}, not an object",
                retryable=False,
            )
        return reply

    def _content(self, reply: dict[str, Any]) -> str:
        try:
            choice = reply["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            raise EngineError(f"{self._url} answered without choices[0].message.content") from e
        if not isinstance(content, str):
            raise EngineError(f"{self._url} answered with non-text content: {content!r:.200}")
        if choice.get("finish_reason") == FINISH_LENGTH:
            # Kept: the answer parsers say what is missing from a cut answer.
            logger.warning("%s stopped at max_tokens: the answer may be cut short", self._model)
        return content


def _is_local_test_model(name: str) -> bool:
    """True if ``name`` is a directory here that holds the node's test checkpoint."""
    try:
        return is_test_model(Path(name))
    except (OSError, ValueError):
        return False


def _check_encoding(image_format: str, jpeg_quality: int) -> None:
    if image_format not in ("jpeg", "png"):
        raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be 1 to 100, got {jpeg_quality}")


def image_data_url(
    image: Image.Image,
    fmt: ImageFormat = DEFAULT_IMAGE_FORMAT,
    quality: int = DEFAULT_JPEG_QUALITY,
) -> str:
    """``image`` as a ``data:image/jpeg`` or ``data:image/png`` base64 URL.

    JPEG at ``quality`` with full-resolution chroma (``JPEG_SUBSAMPLING``); PNG is
    lossless, at compression level 1. ``quality`` is used by JPEG only.
    """
    _check_encoding(fmt, quality)
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        if image.mode not in JPEG_MODES:
            raise ValueError(
                f"a JPEG data URL takes a {' or '.join(JPEG_MODES)} image, got mode "
                f"{image.mode!r} (set model.image_format to png)"
            )
        image.save(buffer, format="JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/{fmt};base64,{encoded}"

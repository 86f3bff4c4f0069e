"""MedGemma behind an OpenAI-compatible chat completions server (vLLM, SGLang).

Same prompts, same images in the same order as the in-process engine; greedy decoding.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from PIL import Image

from node.inference.answers import strip_thinking
from node.inference.request import EngineError, Prompt

logger = logging.getLogger(__name__)

OPENAI_TIMEOUT_SECONDS = 600.0
CHAT_COMPLETIONS = "/chat/completions"


class OpenAIEngine:
    """MedGemma served by vLLM or any OpenAI-compatible chat completions endpoint."""

    def __init__(self, url: str, *, model: str, timeout: float = OPENAI_TIMEOUT_SECONDS) -> None:
        base = url.rstrip("/")
        self._url = base if base.endswith(CHAT_COMPLETIONS) else base + CHAT_COMPLETIONS
        self._model = model
        self._timeout = timeout

    @property
    def label(self) -> str:
        return self._model

    @property
    def is_test_model(self) -> bool:
        return False

    @property
    def url(self) -> str:
        return self._url

    def request_body(self, prompt: Prompt) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        if prompt.system:
            messages.append({"role": "system", "content": prompt.system})
        parts = [
            {"type": "image_url", "image_url": {"url": image_data_url(part)}}
            if isinstance(part, Image.Image)
            else {"type": "text", "text": part}
            for part in prompt.content
        ]
        messages.append({"role": "user", "content": parts})
        return {
            "model": self._model,
            "messages": messages,
            "max_tokens": prompt.max_new_tokens,
            "temperature": 0,  # greedy, as do_sample=False
        }

    def generate(self, prompt: Prompt) -> str:
        started = time.monotonic()
        body = json.dumps(self.request_body(prompt)).encode("utf-8")
        request = urllib.request.Request(
            self._url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        reply = self._post(request)
        text = self._content(reply)
        logger.info(
            "%s at %s: %d images in %.1f s",
            self._model,
            self._url,
            len(prompt.images),
            time.monotonic() - started,
        )
        return strip_thinking(text)

    def _post(self, request: urllib.request.Request) -> Any:
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            detail = e.read(500).decode("utf-8", errors="replace")
            raise EngineError(f"{self._url} answered HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise EngineError(f"cannot reach the model endpoint {self._url}: {reason}") from e
        except json.JSONDecodeError as e:
            raise EngineError(f"{self._url} did not answer with JSON: {e}") from e

    def _content(self, reply: Any) -> str:
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            raise EngineError(f"{self._url} answered without choices[0].message.content") from e
        if not isinstance(content, str):
            raise EngineError(f"{self._url} answered with non-text content: {content!r:.200}")
        return content


def image_data_url(image: Image.Image) -> str:
    """A lossless PNG data URL; compression level 1 is ~10× faster than the default."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

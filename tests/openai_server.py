"""An OpenAI-compatible chat completions server over the test checkpoint, on loopback.

What vLLM does with a request, in little: the messages become a Gemma 3 conversation
(images decoded from their PNG or JPEG data URLs, in order, the system message folded in
by the chat template, earlier turns and their answers before the question) and are
answered greedily by the real model. Here the model is
``TransformersEngine`` on the tiny test checkpoint, so an answer through this server can
be compared with the in-process answer.

It can be told to fail the next requests with a status, or to answer them late, and it
records what it was sent: the request bodies, the prompts it rebuilt, the most requests
it had in flight at once.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import AutoProcessor

from node.inference.engine import TransformersEngine
from node.inference.prompts import chat_messages
from node.inference.request import Prompt, Turn

# The data URL's media type and the format PIL must find in it.
DATA_URL_FORMATS = {"data:image/png;base64,": "PNG", "data:image/jpeg;base64,": "JPEG"}


class BadRequest(ValueError):
    """A request the server refuses with HTTP 400, as vLLM does."""


@dataclass
class _Scripted:
    """What the next requests get instead of (or before) an answer."""

    count: int
    status: int | None = None  # fail with this status
    delay: float = 0.0  # answer (or fail) this many seconds late


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    prompt: Prompt | None = None


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: list[Received] = field(default_factory=list)
    script: list[_Scripted] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


class OpenAIServer:
    """Serves ``/v1/models`` and ``/v1/chat/completions`` for ``model_name`` on a free port."""

    def __init__(
        self,
        engine: TransformersEngine,
        checkpoint: Path,
        *,
        model_name: str = "google/medgemma-1.5-4b-it",
        api_key: str | None = None,
        list_models: bool = True,
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self.api_key = api_key
        self.list_models = list_models  # False: /v1/models is 404, as on some servers
        # What /v1/models lists as the model's root, as vLLM does: the directory it loaded.
        self.root = str(checkpoint)
        self.answer_prefix = ""  # e.g. a thinking trace in front of every answer
        self.delay = 0.0  # every chat request answers this late
        # Its own processor, for the usage counts: the tokens the model was given.
        self._processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)
        self._state = _State()
        self._model_lock = threading.Lock()  # one generate at a time on the shared model
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> OpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes delayed handlers
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- scripting and records --------------------------------------------------------------

    def fail_next(self, count: int, status: int = HTTPStatus.SERVICE_UNAVAILABLE) -> None:
        with self._state.lock:
            self._state.script.append(_Scripted(count, status=status))

    def delay_next(self, count: int, seconds: float) -> None:
        with self._state.lock:
            self._state.script.append(_Scripted(count, delay=seconds))

    @property
    def chats(self) -> list[Received]:
        with self._state.lock:
            return [r for r in self._state.received if r.path.endswith("/chat/completions")]

    @property
    def max_in_flight(self) -> int:
        return self._state.max_in_flight

    def _next_scripted(self) -> _Scripted | None:
        with self._state.lock:
            while self._state.script and self._state.script[0].count <= 0:
                self._state.script.pop(0)
            if not self._state.script:
                return None
            scripted = self._state.script[0]
            scripted.count -= 1
            return scripted

    # --- answering --------------------------------------------------------------------------

    def chat(self, body: dict[str, Any]) -> tuple[Prompt, dict[str, Any]]:
        """Rebuild the prompt from the messages and answer it with the test model."""
        if body.get("model") != self.model_name:
            raise BadRequest(f"The model `{body.get('model')}` does not exist.")
        prompt = rebuild_prompt(body)
        with self._model_lock:
            text = self.answer_prefix + self.engine.generate(prompt)
            batch = self._processor.apply_chat_template(
                chat_messages(prompt),
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
            )
            prompt_tokens = int(batch["input_ids"].shape[-1])
            completion_tokens = len(self._processor.tokenizer(text)["input_ids"])
        reply = {
            "id": f"chatcmpl-{len(self.chats)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return prompt, reply

    @contextmanager
    def _counted(self) -> Iterator[None]:
        with self._state.lock:
            self._state.in_flight += 1
            self._state.max_in_flight = max(self._state.max_in_flight, self._state.in_flight)
        try:
            yield
        finally:
            with self._state.lock:
                self._state.in_flight -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if not self._authorized():
                    return
                if self.path.rstrip("/") != "/v1/models" or not server.list_models:
                    self._send(HTTPStatus.NOT_FOUND, {"detail": "Not Found"})
                    return
                models = [
                    {
                        "id": server.model_name,
                        "object": "model",
                        "owned_by": "test",
                        "root": server.root,
                    }
                ]
                self._send(HTTPStatus.OK, {"object": "list", "data": models})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                received = Received(self.path, dict(self.headers.items()), body)
                with server._state.lock:
                    server._state.received.append(received)
                if not self._authorized():
                    return
                if self.path != "/v1/chat/completions":
                    self._send(HTTPStatus.NOT_FOUND, {"detail": "Not Found"})
                    return
                # Counted until the answer is ready, not sent: a client that has read it
                # may send its next request before this thread gets to run again.
                with server._counted():
                    scripted = server._next_scripted()
                    delay = server.delay + (scripted.delay if scripted else 0.0)
                    if delay and server._stopping.wait(delay):
                        return
                    status, reply = HTTPStatus.OK, {}
                    if scripted and scripted.status:
                        status, reply = scripted.status, _error(scripted.status, "scripted")
                    else:
                        try:
                            received.prompt, reply = server.chat(body)
                        except BadRequest as e:
                            status, reply = HTTPStatus.BAD_REQUEST, _error(400, str(e))
                self._send(status, reply)

            def _authorized(self) -> bool:
                if server.api_key is None:
                    return True
                if self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                self._send(HTTPStatus.UNAUTHORIZED, _error(401, "Unauthorized"))
                return False

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test); nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test log to the node's own lines

        return Handler


def _error(status: int, message: str) -> dict[str, Any]:
    """vLLM's error body."""
    return {"object": "error", "message": message, "type": "Error", "code": status}


def rebuild_prompt(body: dict[str, Any]) -> Prompt:
    """The Prompt a chat completions body carries; BadRequest where it isn't a conversation.

    An optional system message, then user and assistant messages alternating, a user
    message last: the Gemma 3 chat template refuses any other order.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    system: str | None = None
    if messages[0].get("role") == "system":
        system = _text(messages[0]["content"])
        messages = messages[1:]
    roles = [message.get("role") for message in messages]
    if len(roles) % 2 != 1 or roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        raise BadRequest(
            "Conversation roles must alternate user/assistant/user/assistant/..., "
            f"after an optional system message, and end with user; got {roles}"
        )
    history = tuple(
        Turn(_content(asked["content"]), _text(answered["content"]))
        for asked, answered in zip(messages[:-1:2], messages[1:-1:2], strict=True)
    )
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}")
    return Prompt(
        system=system,
        content=_content(messages[-1]["content"]),
        max_new_tokens=max_tokens,
        history=history,
    )


def _content(content: str | list[dict[str, Any]]) -> tuple[str | Image.Image, ...]:
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    parts: list[str | Image.Image] = []
    for part in content:
        if part.get("type") == "text":
            parts.append(part["text"])
        elif part.get("type") == "image_url":
            parts.append(decode_image_url(part["image_url"]["url"]))
        else:
            raise BadRequest(f"unsupported content part {part.get('type')!r}")
    return tuple(parts)


def _text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") == "text")


def decode_image_url(url: str) -> Image.Image:
    """The image a PNG or JPEG data URL holds; BadRequest for anything else."""
    prefix = next((p for p in DATA_URL_FORMATS if url.startswith(p)), None)
    if prefix is None:
        raise BadRequest(f"expected a PNG or JPEG data URL, got {url[:40]!r}")
    expected = DATA_URL_FORMATS[prefix]
    image = Image.open(io.BytesIO(base64.b64decode(url.removeprefix(prefix))))
    if image.format != expected:
        raise BadRequest(f"the {expected} data URL holds a {image.format}")
    return image.copy()  # a plain Image, read in full, as the node's own images are

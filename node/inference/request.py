"""What every engine takes and gives: one chat turn in, generated text out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from PIL import Image

TEST_MODEL_LABEL = "TEST MODEL"


@dataclass(frozen=True)
class Prompt:
    """One user turn as the official MedGemma notebooks build it.

    ``content`` holds text and images interleaved in prompt order; ``system`` is
    folded into the first user turn by the Gemma 3 chat template.
    """

    system: str | None
    content: tuple[str | Image.Image, ...]
    max_new_tokens: int

    @property
    def images(self) -> list[Image.Image]:
        return [part for part in self.content if isinstance(part, Image.Image)]

    @property
    def text(self) -> str:
        """The text parts, images shown as <image>: for logs and --save-inputs."""
        parts = ["<image>" if isinstance(p, Image.Image) else p for p in self.content]
        head = f"[system] {self.system}\n" if self.system else ""
        return head + "\n".join(parts)


class Engine(Protocol):
    """A loaded model. ``label`` is what result objects name as the model."""

    @property
    def label(self) -> str: ...

    @property
    def is_test_model(self) -> bool: ...

    def generate(self, prompt: Prompt) -> str: ...


class EngineError(RuntimeError):
    """A generation request that failed; the message names the model or endpoint."""

"""What every engine takes and gives: a conversation in, the model's next answer out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

TEST_MODEL_LABEL = "TEST MODEL"

Content = tuple[str | Image.Image, ...]


@dataclass(frozen=True)
class Turn:
    """An earlier exchange of the same conversation: what was asked, what the model said."""

    content: Content
    answer: str


@dataclass(frozen=True)
class Prompt:
    """A conversation as the official MedGemma notebooks build it.

    ``content`` is the user turn to answer now, text and images interleaved in prompt
    order; ``history`` the exchanges before it (empty for every official recipe's first
    turn); ``system`` is folded into the first user turn by the Gemma 3 chat template.
    """

    system: str | None
    content: Content
    max_new_tokens: int
    history: tuple[Turn, ...] = ()

    def follow_up(
        self, answer: str, content: Sequence[str | Image.Image], max_new_tokens: int
    ) -> Prompt:
        """The same conversation with ``answer`` given to this turn and ``content`` asked next."""
        return Prompt(
            system=self.system,
            content=tuple(content),
            max_new_tokens=max_new_tokens,
            history=(*self.history, Turn(self.content, answer)),
        )

    @property
    def images(self) -> list[Image.Image]:
        """Every image of the conversation, in the order the model reads them."""
        parts = [part for turn in self.history for part in turn.content] + list(self.content)
        return [part for part in parts if isinstance(part, Image.Image)]

    @property
    def text(self) -> str:
        """The text parts, images shown as <image>: for logs and --save-inputs."""
        head = f"[system] {self.system}\n" if self.system else ""
        if not self.history:
            return head + _shown(self.content)
        turns = [f"[user]\n{_shown(t.content)}\n[model]\n{t.answer}" for t in self.history]
        return head + "\n".join([*turns, f"[user]\n{_shown(self.content)}"])


def _shown(content: Content) -> str:
    return "\n".join("<image>" if isinstance(p, Image.Image) else p for p in content)


class Engine(Protocol):
    """A loaded model. ``label`` is what result objects name as the model."""

    @property
    def label(self) -> str: ...

    @property
    def is_test_model(self) -> bool: ...

    def generate(self, prompt: Prompt) -> str: ...


class EngineError(RuntimeError):
    """A generation request that failed; the message names the model or endpoint."""

"""Reading MedGemma's answers: the thinking trace, "Final Answer:", boxes, report sections.

Each parser validates the answer once, here, and says what was wrong with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# MedGemma 1.5 ends an optional thinking trace with this token.
THINKING_END = "<unused95>"
BOX_SCALE = 1000  # box_2d coordinates are normalized to 0-1000

_FINAL_ANSWER = re.compile(r"Final Answer:\s*(.+)", re.IGNORECASE)
_SECTION = re.compile(r"^\s*(FINDINGS|IMPRESSION)\s*:\s*", re.IGNORECASE | re.MULTILINE)
_JSON_OPEN = "```json"
_FENCE = "```"


class AnswerError(ValueError):
    """A model answer that doesn't have the form the prompt asked for."""


def strip_thinking(text: str) -> str:
    """Drop a thinking trace (everything up to the last ``<unused95>``) and outer space."""
    _, _, answer = text.rpartition(THINKING_END)
    return answer.strip()


def final_answer(text: str) -> str | None:
    """The text after the last "Final Answer:" on its line, or None if there is none."""
    matches = _FINAL_ANSWER.findall(text)
    return matches[-1].strip().strip("'\"*.").strip() if matches else None


def yes_no(text: str) -> bool | None:
    """The yes/no verdict of a volume answer; None when the model gave neither."""
    verdict = final_answer(text)
    if verdict is None:
        return None
    word = verdict.split()[0].lower().strip(".,;:!'\"*") if verdict.split() else ""
    return {"yes": True, "no": False}.get(word)


def report_sections(text: str) -> dict[str, str]:
    """The FINDINGS and IMPRESSION sections of a report, by upper-case name; may be empty."""
    sections: dict[str, str] = {}
    marks = list(_SECTION.finditer(text))
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = following.start() if following is not None else len(text)
        sections[mark.group(1).upper()] = text[mark.end() : end].strip()
    return sections


@dataclass(frozen=True)
class Box:
    """One ``box_2d`` as MedGemma writes it: [y0, x0, y1, x1] normalized to 0-1000."""

    label: str
    y0: float
    x0: float
    y1: float
    x1: float

    def to_pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in pixels of the (square-padded) image the model saw."""
        return (
            self.x0 / BOX_SCALE * width,
            self.y0 / BOX_SCALE * height,
            self.x1 / BOX_SCALE * width,
            self.y1 / BOX_SCALE * height,
        )


def parse_boxes(text: str) -> list[Box]:
    """The boxes between the first ```json and the last ```, as the notebook parses them."""
    start = text.find(_JSON_OPEN)
    end = text.rfind(_FENCE)
    if start < 0 or end <= start:
        raise AnswerError("the answer has no ```json ... ``` block")
    raw = text[start + len(_JSON_OPEN) : end]
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as e:
        raise AnswerError(f"the ```json block is not valid JSON: {e}") from e
    if not isinstance(items, list):
        raise AnswerError(f"the ```json block must be a list of boxes, got {type(items).__name__}")
    return [_box(item, index) for index, item in enumerate(items)]


def _box(item: object, index: int) -> Box:
    if not isinstance(item, dict):
        raise AnswerError(f"box {index} is not an object: {item!r}")
    coords = item.get("box_2d")
    label = item.get("label")
    if not isinstance(label, str):
        raise AnswerError(f"box {index} has no string label: {item!r}")
    if (
        not isinstance(coords, list)
        or len(coords) != 4
        or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in coords)
    ):
        raise AnswerError(f"box {index} ({label!r}) needs box_2d as 4 numbers, got {coords!r}")
    y0, x0, y1, x1 = (float(c) for c in coords)
    if not (0 <= y0 < y1 <= BOX_SCALE and 0 <= x0 < x1 <= BOX_SCALE):
        raise AnswerError(
            f"box {index} ({label!r}) must satisfy 0 <= y0 < y1 <= {BOX_SCALE} and "
            f"0 <= x0 < x1 <= {BOX_SCALE}, got {coords!r}"
        )
    return Box(label=label, y0=y0, x0=x0, y1=y1, x1=x1)

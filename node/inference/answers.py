"""Reading MedGemma's answers: thinking trace, "Final Answer:", boxes, report sections,
longitudinal comparisons, WSI descriptions and lab tests.

Each parser validates the answer once, here, and says what was wrong with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

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


# --- longitudinal chest X-ray ------------------------------------------------------------------

Verdict = Literal["improved", "stable", "worsened"]
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
# MS-CXR-T's answer options: (A) Improved, (B) Stable, (C) Worsened.
VERDICT_LETTERS: dict[str, Verdict] = {"a": "improved", "b": "stable", "c": "worsened"}
_VERDICT_WORDS: dict[str, Verdict] = {verdict: verdict for verdict in VERDICTS}

# "FINDING: <name> | <verdict>", as the prompt asks; the verdict is read by _verdict.
_FINDING_LINE = re.compile(r"^FINDING\s*:\s*(?P<name>[^|]*?)\s*\|\s*(?P<verdict>.*?)\s*$", re.I)
# "<name>: (A) Improved" (or "|", "-" before the letter): MS-CXR-T's lettered form, read
# only with both letter and word, so ordinary prose is never taken for a verdict.
_LETTERED_LINE = re.compile(
    r"^(?P<name>[^|:]+?)\s*[:|\-\u2013]\s*(?P<verdict>\([abc]\)\s*(?:improved|stable|worsened))"
    r"\W*$",
    re.I,
)
# A verdict: "Improved", "(A) Improved", "(A)", "A", with an optional full stop.
_VERDICT = re.compile(
    r"^(?:\(?(?P<letter>[abc])\)?[.:]?(?:\s+|$))?(?P<word>improved|stable|worsened)?\s*\.?$", re.I
)
_MARKUP = "*_`"  # Markdown emphasis the model may wrap a line or a word in
_BULLETS = "-*\u2022 \t"


@dataclass(frozen=True)
class FindingVerdict:
    """One finding's change from the prior image to the current one."""

    finding: str
    verdict: Verdict


@dataclass(frozen=True)
class Comparison:
    """A longitudinal answer: the free-text comparison and the per-finding verdicts.

    ``summary`` is the answer without its verdict lines. ``unread`` holds the lines
    that started as a verdict (``FINDING: ... | ...``) but whose verdict is none of
    Improved, Stable, Worsened, or whose letter and word disagree; they also stay in
    the summary, so nothing the model wrote is lost.
    """

    summary: str
    verdicts: list[FindingVerdict]
    unread: tuple[str, ...] = ()


def _verdict(text: str) -> Verdict | None:
    """The verdict of "Improved", "(A) Improved", "(A)" or "A"; None if unreadable."""
    match = _VERDICT.match(text.strip(_MARKUP + " "))
    if match is None or not (match["letter"] or match["word"]):
        return None
    by_letter = VERDICT_LETTERS[match["letter"].lower()] if match["letter"] else None
    by_word = _VERDICT_WORDS[match["word"].lower()] if match["word"] else None
    if by_letter and by_word and by_letter != by_word:
        return None
    return by_letter or by_word


def _verdict_line(line: str) -> tuple[FindingVerdict | None, bool]:
    """(the verdict, whether the line has a verdict's form) for one line of the answer."""
    plain = line.replace("**", "").lstrip(_BULLETS).strip()
    match = _FINDING_LINE.match(plain) or _LETTERED_LINE.match(plain)
    if match is None:
        return None, False
    name = match["name"].strip(_MARKUP + " ")
    verdict = _verdict(match["verdict"])
    if not name or verdict is None:
        return None, True
    return FindingVerdict(finding=name, verdict=verdict), True


def parse_longitudinal(text: str) -> Comparison:
    """The comparison and per-finding verdicts of a longitudinal answer.

    Verdict lines are ``FINDING: <name> | <Improved|Stable|Worsened>`` as the prompt
    asks, the verdict optionally with MS-CXR-T's letter ("(A) Improved", or the letter
    alone); also ``<name>: (A) Improved``. Case, bullets and bold are ignored. An
    answer with no verdict lines gives no verdicts; an empty answer raises
    :class:`AnswerError`.
    """
    answer = strip_thinking(text)
    if not answer:
        raise AnswerError("the longitudinal answer is empty")
    verdicts: list[FindingVerdict] = []
    unread: list[str] = []
    kept: list[str] = []
    for line in answer.splitlines():
        verdict, has_form = _verdict_line(line)
        if verdict is not None:
            verdicts.append(verdict)
            continue
        if has_form:
            unread.append(line.strip())
        kept.append(line)
    summary = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    return Comparison(summary=summary, verdicts=verdicts, unread=tuple(unread))


# --- whole-slide images --------------------------------------------------------------------


def parse_wsi_description(text: str) -> str:
    """The slide description: the answer without a thinking trace; never empty."""
    description = strip_thinking(text)
    if not description:
        raise AnswerError("the WSI answer is empty")
    return description


# --- lab reports -----------------------------------------------------------------------------

# The prompt's keys, in its order. name and result make a test; the rest may be null.
LAB_REQUIRED_FIELDS = ("name", "result")
LAB_OPTIONAL_FIELDS = ("unit", "range", "panel", "method", "specimen", "sample_collection_time")
LAB_FIELDS = LAB_REQUIRED_FIELDS + LAB_OPTIONAL_FIELDS
# The format the prompt asks for. Only unambiguous variants are rewritten into it: the
# same day-first order without seconds, and ISO year-first. A slash date such as
# 02/01/2026 is day-first in one country and month-first in another, so it stays raw.
LAB_TIME_FORMAT = "%d-%m-%Y %H:%M:%S"
_LAB_TIME_VARIANTS = (
    LAB_TIME_FORMAT,
    "%d-%m-%Y %H:%M",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M",
)
_FENCED = re.compile(r"```(?:json)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)
_EXCERPT_CHARS = 80


@dataclass(frozen=True)
class LabResult:
    """One test from a lab report, as the extraction prompt names its fields.

    Values are the model's text, stripped; numbers it wrote unquoted become strings.
    ``sample_collection_time`` is rewritten as DD-MM-YYYY HH:MM:SS where it parses
    unambiguously; otherwise it is kept as written and ``sample_collection_time_raw``
    is True, so a consumer can tell a checked time from a string to show as is.
    ``ignored_keys`` names keys the prompt didn't ask for, which are dropped: said
    rather than silently lost.
    """

    name: str
    result: str
    unit: str | None = None
    range: str | None = None
    panel: str | None = None
    method: str | None = None
    specimen: str | None = None
    sample_collection_time: str | None = None
    sample_collection_time_raw: bool = False
    ignored_keys: tuple[str, ...] = ()


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= _EXCERPT_CHARS else flat[:_EXCERPT_CHARS] + "...")


def _lab_json(text: str) -> str:
    """The JSON text: the first fenced block if there is one, else from the first '['."""
    fenced = _FENCED.search(text)
    if fenced:
        return fenced.group(1).strip()
    start = text.find("[")
    if start < 0:
        raise AnswerError(f"the answer has no JSON list of lab tests: {_excerpt(text)}")
    return text[start:]


def parse_lab_results(text: str) -> list[LabResult]:
    """The lab tests of an extraction answer, each validated; an empty list is valid.

    The list may be inside ```json ... ``` (as MedGemma writes it) or bare, with text
    around it. Any other shape raises :class:`AnswerError` naming the test's index and
    the field at fault, or quoting the start of an answer that holds no JSON list.
    """
    answer = strip_thinking(text)
    raw = _lab_json(answer)
    try:
        # raw_decode: a bare list may be followed by prose ("Final Answer: ...").
        items, _ = json.JSONDecoder().raw_decode(raw)
    except json.JSONDecodeError as e:
        raise AnswerError(
            f"the lab tests are not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
            f"{_excerpt(raw)}"
        ) from e
    if not isinstance(items, list):
        raise AnswerError(
            f"the lab tests must be a JSON list, got {type(items).__name__}: {_excerpt(raw)}"
        )
    return [_lab_result(item, index) for index, item in enumerate(items)]


def _lab_value(item: dict[str, object], key: str, index: int) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise AnswerError(
            f"lab test {index}: {key!r} must be a string or a number, "
            f"got {type(value).__name__} {value!r}"
        )
    text = value.strip() if isinstance(value, str) else str(value)
    return text or None


def _lab_result(item: object, index: int) -> LabResult:
    if not isinstance(item, dict):
        raise AnswerError(f"lab test {index} is not an object: {item!r}")
    values = {key: _lab_value(item, key, index) for key in LAB_FIELDS}
    for key in LAB_REQUIRED_FIELDS:
        if values[key] is None:
            state = (
                "is missing" if key not in item else "is null" if item[key] is None else "is empty"
            )
            raise AnswerError(f"lab test {index}: {key!r} {state}: {item!r}")
    time, raw = _collection_time(values["sample_collection_time"])
    return LabResult(
        name=str(values["name"]),
        result=str(values["result"]),
        unit=values["unit"],
        range=values["range"],
        panel=values["panel"],
        method=values["method"],
        specimen=values["specimen"],
        sample_collection_time=time,
        sample_collection_time_raw=raw,
        ignored_keys=tuple(sorted(str(key) for key in item if key not in LAB_FIELDS)),
    )


def _collection_time(value: str | None) -> tuple[str | None, bool]:
    """(time, kept raw): DD-MM-YYYY HH:MM:SS where it parses, else the text as written."""
    if value is None:
        return None, False
    for variant in _LAB_TIME_VARIANTS:
        try:
            parsed = datetime.strptime(value, variant)
        except ValueError:
            continue
        return parsed.strftime(LAB_TIME_FORMAT), False
    return value, True

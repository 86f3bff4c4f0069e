"""Which AI findings make a study urgent on the worklist: a small, fixed list of critical labels.

A reading room sorts its list by this flag, so it must not fire on findings a report
denies: every text goes through :func:`node.results.findings.named_findings`, which
leaves out negated mentions ("no pneumothorax") and keeps hedged ones ("cannot exclude
pneumothorax"). Labels are the canonical vocabulary of :mod:`node.results.codes`, so a
critical finding can only be listed here if that vocabulary names it (free air /
pneumoperitoneum is not there yet and so cannot be flagged).

This is triage of unverified AI output, not a clinical decision: an urgent flag asks a
human to look first; a missing one promises nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from pydantic import BaseModel

from node.inference.prompts import VOLUME_DEFAULT_FINDING
from node.pipeline.record import JobRecord
from node.results.findings import named_findings

__all__ = [
    "URGENT_FINDINGS",
    "URGENT_WHEN_LARGE",
    "VOLUME_YES",
    "StatedFindings",
    "urgent_findings",
]

# Urgent whenever present (or possibly present).
URGENT_FINDINGS: frozenset[str] = frozenset({"pneumothorax", "pulmonary edema", "mass"})
# Urgent only when the same phrase calls them large ("large left pleural effusion").
URGENT_WHEN_LARGE: frozenset[str] = frozenset({"pleural effusion"})

_LARGE = re.compile(r"\b(?:large|massive|extensive|tension)\b", re.IGNORECASE)
# A size word qualifies the finding in its own phrase only: "small effusion, large mass".
_PHRASE_BREAK = re.compile(r"[.;,\n]")
# CT and MR jobs ask whether the volume shows VOLUME_DEFAULT_FINDING; a "yes" (the record's
# ``verdict`` True) is urgent under this label.
VOLUME_YES = VOLUME_DEFAULT_FINDING.removeprefix("any ")


class StatedFindings(BaseModel):
    """What a job record can state a critical finding in, under the record's own names
    (:mod:`node.pipeline.record`); a task's record lacks what its task doesn't state."""

    findings: list[str] = []  # labels
    verdicts: list[str] = []  # a comparison's "finding: Verdict" lines
    impression: str | None = None  # the model's free text
    report: str | None = None
    verdict: bool | None = None  # a volume's yes/no

    def texts(self) -> Iterable[str]:
        yield from self.findings
        # "right pneumothorax: Worsened": the finding is the part before the verdict.
        yield from (verdict.rsplit(":", 1)[0] for verdict in self.verdicts)
        yield from (text for text in (self.impression, self.report) if text is not None)


def _critical_in(text: str) -> list[str]:
    found = [label for label in named_findings(text) if label in URGENT_FINDINGS]
    for phrase in _PHRASE_BREAK.split(text):
        if not _LARGE.search(phrase):
            continue
        found += [
            f"large {label}" for label in named_findings(phrase) if label in URGENT_WHEN_LARGE
        ]
    return found


def urgent_findings(record: JobRecord | Mapping[str, object] | None) -> list[str]:
    """The critical labels a job record states as present, each once, in order found.

    Read from the record's ``findings`` labels, the finding part of its comparison
    ``verdicts``, its ``impression`` / ``report`` text when the task recorded them, and a
    volume task's yes/no ``verdict``: a task's record model, or a record as stored.
    """
    if record is None:
        return []
    stated = StatedFindings.model_validate(record, from_attributes=isinstance(record, JobRecord))
    found: list[str] = [VOLUME_YES] if stated.verdict is True else []
    for text in stated.texts():
        found += [label for label in _critical_in(text) if label not in found]
    return found

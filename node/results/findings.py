"""Which chest findings a free-text radiology report states as present.

The node asks the model to localize findings one label at a time, so it needs the
labels a report (MedGemma's "FINDINGS: ... IMPRESSION: ...") actually asserts. The
words come from :mod:`node.results.codes`, so every label returned can be coded;
the negation rules are a small NegEx: a normal report names findings only to deny
them ("No pleural effusion or pneumothorax."), and those must not be boxed. Hedged
mentions ("possible", "cannot exclude") count as present: a radiologist wants them
looked at.
"""

from __future__ import annotations

import re

from node.results.codes import finding_vocabulary

__all__ = ["named_findings"]

# Negation scope ends at a sentence end, a semicolon or line break, a contrastive
# word, or a fresh "there is/are" ("No effusion, there is a left opacity").
_CLAUSE_BREAK = re.compile(
    r"[.!?](?=\s|$)|[;\n]"
    r"|\b(?:but|however|although|though|otherwise|except|aside from|apart from|whereas)\b"
    r"|(?=\bthere (?:is|are)\b)",
    re.IGNORECASE,
)

# Phrases that look like negation but are not: they are removed before the cues are
# looked for. "Cannot exclude pneumothorax" means it may be there; "no change in the
# effusion" means the effusion is still there.
_PSEUDO_NEGATION = re.compile(
    r"\b(?:cannot|can ?not|can't|could not|couldn't|not)\s+(?:be\s+)?"
    r"(?:entirely\s+|completely\s+|definitely\s+|totally\s+)?(?:exclude[sd]?|rule[sd]?\s+out)\b"
    r"|\b(?:no|without)\s+(?:significant\s+|interval\s+)?(?:change|increase|worsening)\b"
    r"|\bnot only\b",
    re.IGNORECASE,
)

# A cue before the mention, anywhere earlier in its clause ("no" covers "no evidence of").
_NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|negative for|free of|clear of|absence of|ruled out"
    r"|resolved|resolution of|removed)\b",
    re.IGNORECASE,
)

# A cue after the mention. Its scope stops at a comma, so "Left effusion is present,
# pneumothorax is not seen" keeps the effusion: a missed box costs more than an extra one.
_NEGATION_AFTER = re.compile(
    r"\b(?:(?:is|are|was|were)\s+)?not\s+(?:seen|identified|visualized|present|evident)\b"
    r"|\b(?:has|have)\s+(?:resolved|been\s+removed)\b"
    r"|\b(?:is|are)\s+absent\b|\bexcluded\b|\bruled\s+out\b|\bnone\b",
    re.IGNORECASE,
)


_VOCABULARY = finding_vocabulary()


def _mention_pattern() -> re.Pattern[str]:
    """All vocabulary terms, longest first, so "pleural effusion" beats "effusion".

    Words may be joined by spaces or hyphens and take a regular plural ("effusions").
    """
    terms = sorted(_VOCABULARY, key=len, reverse=True)
    alternatives = (r"[\s-]+".join(map(re.escape, term.split())) for term in terms)
    return re.compile(rf"\b(?:{'|'.join(alternatives)})(?:e?s)?\b", re.IGNORECASE)


_MENTION = _mention_pattern()


def _canonical(mention: str) -> str:
    words = " ".join(re.split(r"[\s-]+", mention.lower()))
    for candidate in (words, words.removesuffix("s"), words.removesuffix("es")):
        if candidate in _VOCABULARY:
            return _VOCABULARY[candidate]
    raise AssertionError(f"{mention!r} matched but is not in the vocabulary")


def _is_negated(clause: str, start: int, end: int) -> bool:
    after = clause[end:].split(",", 1)[0]
    return bool(_NEGATION_BEFORE.search(clause[:start]) or _NEGATION_AFTER.search(after))


def named_findings(report: str, *, limit: int | None = None) -> list[str]:
    """The canonical finding labels ``report`` states as present (or possibly present).

    In order of first positive mention, each once, at most ``limit`` of them; the
    labels are those :func:`node.results.codes.coded_finding` codes.
    """
    found: list[str] = []
    for raw_clause in _CLAUSE_BREAK.split(report):
        clause = _PSEUDO_NEGATION.sub(" ", raw_clause)
        for mention in _MENTION.finditer(clause):
            label = _canonical(mention.group())
            if label not in found and not _is_negated(clause, mention.start(), mention.end()):
                found.append(label)
    return found if limit is None else found[: max(limit, 0)]

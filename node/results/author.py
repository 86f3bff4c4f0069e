"""Who wrote a result object, and where its series sorts: one place for every builder."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset

from node import MANUFACTURER, __version__
from node.config import Output

__all__ = ["SERIES_NUMBERS", "ResultAuthor", "follow_source"]

_LO_MAX = 64

# The node's series sort after any a modality writes (which rarely pass a few hundred), in
# the same order in every study: report, presentation state, burned-in copy.
SERIES_NUMBERS: dict[Output, int] = {Output.SR: 9902, Output.GSPS: 9903, Output.SC: 9904}


@dataclass(frozen=True)
class ResultAuthor:
    """The model behind a result and the software that wrote it (General Equipment).

    ``is_test_model`` marks every object TEST MODEL; ``model_label`` names the model in
    descriptions, banners and the SR's device observer.
    """

    model_label: str
    is_test_model: bool
    manufacturer: str = MANUFACTURER
    software_version: str = __version__

    def series_description(self, what: str) -> str:
        """How a result's series reads in a viewer's list (LO: 64): what it is, by which
        model, UNVERIFIED, and TEST MODEL first when so."""
        prefix = "TEST MODEL " if self.is_test_model else ""
        text = f"{prefix}AI {what} {self.model_label} (UNVERIFIED)"
        if len(text) > _LO_MAX:
            # The model label is the longest part and the least useful in a list.
            text = f"{prefix}AI {what} (UNVERIFIED)"
        return text[:_LO_MAX]


def follow_source(result: Dataset, source: Dataset, description: str) -> None:
    """What every result's series takes from its source: its body part (without it
    dciodvfy asks for Laterality in General Series) and the author's description."""
    result.SeriesDescription = description
    if "BodyPartExamined" in source:
        result.BodyPartExamined = source.BodyPartExamined

"""Who wrote a result object, and where its series sorts: one place for every builder."""

from __future__ import annotations

from dataclasses import dataclass

from node import MANUFACTURER, __version__
from node.config import Output

__all__ = ["SERIES_NUMBERS", "ResultAuthor"]

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

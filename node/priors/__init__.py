"""Priors: find the patient's earlier study at the PACS, choose it, bring it here.

``find`` asks the PACS (QIDO-RS or C-FIND), ``choose`` decides (pure), ``retrieve``
fetches (WADO-RS, C-GET or C-MOVE) into ``cache``.
"""

from node.priors.cache import PriorCache, write_instance
from node.priors.choose import PriorChoice, choose_prior, choose_prior_image, modality_family
from node.priors.find import find_candidate_studies
from node.priors.retrieve import (
    prior_report_texts,
    retrieve_prior,
    retrieve_study,
)
from node.priors.study import PriorStudy, PriorsUnavailable

__all__ = [
    "PriorCache",
    "PriorChoice",
    "PriorStudy",
    "PriorsUnavailable",
    "choose_prior",
    "choose_prior_image",
    "find_candidate_studies",
    "modality_family",
    "prior_report_texts",
    "retrieve_prior",
    "retrieve_study",
    "write_instance",
]

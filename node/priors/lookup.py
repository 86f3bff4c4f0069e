"""The pipeline's one call for a prior: find, choose, retrieve, pick the image, read old reports.

Every failure (no PatientID, PACS down, nothing in time) ends in "no prior" with the
reason on the job record: a comparison is a bonus, the single-study report still goes out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from node.config import PacsSettings, PriorSettings
from node.pacs_errors import PacsUnavailable
from node.priors.cache import PriorCache
from node.priors.choose import choose_prior, choose_prior_image
from node.priors.find import find_candidate_studies
from node.priors.retrieve import prior_report_texts, retrieve_prior

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PriorResult:
    image: Dataset | None  # the prior image to compare with; None: single-study report
    reports: list[str] = field(default_factory=list)  # this node's findings on the prior
    record: dict[str, object] = field(default_factory=dict)  # for the job record


@dataclass(frozen=True)
class PriorLookup:
    pacs: PacsSettings
    settings: PriorSettings
    calling_ae: str  # also the C-MOVE destination: the node's own SCP files the instances
    cache_root: Path

    def find(self, current: Dataset) -> PriorResult:
        cache = PriorCache(self.cache_root)
        cache.clean_older_than(self.settings.cache_days)
        try:
            candidates = find_candidate_studies(current, pacs=self.pacs, calling_ae=self.calling_ae)
        except (PacsUnavailable, ValueError) as e:
            return self._none(f"no prior searched: {e}")
        choice = choose_prior(current, candidates, window_days=self.settings.window_days)
        if choice.prior is None:
            return self._none("no prior study qualifies", choice.reasons)
        study_uid = choice.prior.study_uid
        try:
            files = retrieve_prior(
                cache,
                study_uid,
                pacs=self.pacs,
                calling_ae=self.calling_ae,
                method=self.settings.retrieve,
                timeout=self.settings.timeout_seconds,
                move_destination=self.calling_ae,
            )
        except PacsUnavailable as e:
            return self._none(f"prior study {study_uid} not retrieved: {e}", choice.reasons)
        instances = []
        for path in files:
            try:
                instances.append(dcmread(path))
            except (InvalidDicomError, OSError, ValueError) as e:
                log.warning("prior instance %s unreadable: %s", path.name, e)
        image = choose_prior_image(current, instances)
        if image is None:
            return self._none(f"prior study {study_uid} has no comparable image", choice.reasons)
        record: dict[str, object] = {
            "prior_study": study_uid,
            "prior_image": str(image.SOPInstanceUID),
            "prior_date": str(image.get("StudyDate", "")),
            "prior_reasons": choice.reasons,
        }
        return PriorResult(image=image, reports=prior_report_texts(files), record=record)

    @staticmethod
    def _none(why: str, reasons: list[str] | None = None) -> PriorResult:
        log.info("%s", why)
        return PriorResult(
            image=None,
            record={"prior_study": None, "prior_note": why, "prior_reasons": reasons or []},
        )

"""Which findings a free-text report names as present: vocabulary, negation, order."""

from __future__ import annotations

import pytest

from node.results.codes import coded_finding, finding_vocabulary
from node.results.findings import named_findings
from node.testing.checkpoint import REPORT_ANSWER


def test_the_test_models_normal_report_names_nothing() -> None:
    assert named_findings(REPORT_ANSWER) == []


@pytest.mark.parametrize("report", ["", "   \n ", "Heart size is normal.", "Lungs are clear."])
def test_text_without_findings_names_nothing(report: str) -> None:
    assert named_findings(report) == []


def test_a_negation_covers_every_finding_it_lists() -> None:
    assert named_findings("No pleural effusion or pneumothorax.") == []
    assert named_findings("No focal consolidation, mass, nodule or pulmonary edema.") == []


def test_negation_ends_with_its_sentence() -> None:
    report = "Small left pleural effusion. No pneumothorax."
    assert named_findings(report) == ["pleural effusion"]


def test_negation_ends_at_a_contrastive_word() -> None:
    report = "There is no effusion but a right lower lobe opacity is present"
    assert named_findings(report) == ["opacity"]
    assert named_findings("No pneumothorax; cardiomegaly.") == ["cardiomegaly"]
    assert named_findings("Otherwise no consolidation, however atelectasis at the base.") == [
        "atelectasis"
    ]


@pytest.mark.parametrize(
    "report",
    [
        "Pneumothorax is not seen.",
        "Pleural effusion has resolved.",
        "Consolidation is absent.",
        "Pneumonia excluded.",
        "Resolution of the right pneumothorax.",
        "The lungs are clear of consolidation.",
        "Negative for fracture.",
        "The endotracheal tube has been removed.",
        "Without evidence of pulmonary edema.",
    ],
)
def test_negation_cues_before_and_after(report: str) -> None:
    assert named_findings(report) == []


@pytest.mark.parametrize(
    "report",
    [
        "Cannot exclude pneumothorax.",
        "Pneumothorax cannot be excluded.",
        "A small pneumothorax cannot be ruled out.",
        "Possible small apical pneumothorax.",
        "Apical lucency may represent pneumothorax.",
    ],
)
def test_uncertain_mentions_count_as_present(report: str) -> None:
    assert named_findings(report) == ["pneumothorax"]


def test_no_change_in_a_finding_keeps_it() -> None:
    assert named_findings("No interval change in the left pleural effusion.") == [
        "pleural effusion"
    ]


def test_an_impression_only_positive() -> None:
    report = (
        "FINDINGS: The lungs are clear. No pleural effusion. Heart size is normal.\n"
        "IMPRESSION: Right upper lobe pneumonia."
    )
    assert named_findings(report) == ["pneumonia"]


def test_first_positive_mention_order_without_duplicates() -> None:
    report = (
        "FINDINGS: No pneumothorax. Enlarged cardiac silhouette. Bilateral pleural effusions, "
        "right larger than left. Pulmonary nodules in the left lung.\n"
        "IMPRESSION: Cardiomegaly with pleural effusions; pneumothorax is possible."
    )
    assert named_findings(report) == ["cardiomegaly", "pleural effusion", "nodule", "pneumothorax"]


def test_limit_keeps_the_first() -> None:
    report = "Cardiomegaly. Left pleural effusion. Right lower lobe atelectasis."
    assert named_findings(report, limit=2) == ["cardiomegaly", "pleural effusion"]
    assert named_findings(report, limit=0) == []
    assert named_findings(report, limit=10) == ["cardiomegaly", "pleural effusion", "atelectasis"]


def test_the_longest_phrase_wins() -> None:
    report = "Right central venous catheter tip in the SVC. Left pleural effusion."
    assert named_findings(report) == ["central venous catheter", "pleural effusion"]
    assert named_findings("PICC line in place.") == ["central venous catheter"]
    assert named_findings("Pulmonary oedema.") == ["pulmonary edema"]


def test_whole_words_only_and_case_ignored() -> None:
    assert named_findings("Midline trachea. Massive?") == []
    assert named_findings("LEFT PNEUMOTHORAX.") == ["pneumothorax"]
    assert named_findings("Bilateral effusions and masses.") == ["pleural effusion", "mass"]


def test_every_vocabulary_term_is_found_and_coded() -> None:
    for term, label in finding_vocabulary().items():
        assert named_findings(f"There is {term}.") == [label], term
        assert not coded_finding(label).is_free_text

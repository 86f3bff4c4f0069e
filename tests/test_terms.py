"""node.imaging.terms: the words the official prompts take from the study, and their source."""

from __future__ import annotations

from pydicom import Dataset

from node.imaging.terms import NOT_GIVEN, Term, slide_procedure, slide_tissue, volume_region


def _coded(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _dataset(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_ct_region_is_the_notebooks_phrase_for_the_abdomen() -> None:
    assert volume_region(_dataset(BodyPartExamined="ABDOMEN")) == Term(
        "the center of the abdomen", "BodyPartExamined"
    )
    assert volume_region(_dataset(BodyPartExamined="CHEST")) == Term(
        "the chest", "BodyPartExamined"
    )
    assert volume_region(_dataset(BodyPartExamined="KNEE")) == Term("the knee", "BodyPartExamined")
    # The body part wins over the description; without it the description is read.
    both = _dataset(BodyPartExamined="HEAD", StudyDescription="CT ABDOMEN")
    assert volume_region(both).text == "the head"
    assert volume_region(_dataset(StudyDescription="CT Abd/Pelvis w contrast")) == Term(
        "the abdomen and pelvis", "StudyDescription"
    )
    assert volume_region(_dataset(StudyDescription="CT THORAX")) == Term(
        "the chest", "StudyDescription"
    )
    # Nothing said: nothing claimed (not even the notebook's abdomen).
    assert volume_region(_dataset(StudyDescription="Research 42")) == NOT_GIVEN
    assert volume_region(Dataset()) == NOT_GIVEN


def test_slide_tissue_from_the_specimen_then_the_body_part() -> None:
    specimen = _dataset(SpecimenShortDescription="Sigmoid colon")
    assert slide_tissue(
        _dataset(SpecimenDescriptionSequence=[specimen], BodyPartExamined="COLON")
    ) == Term("sigmoid colon", "SpecimenShortDescription")
    anatomy = _dataset(PrimaryAnatomicStructureSequence=[_coded("71854001", "SCT", "Colon")])
    assert slide_tissue(_dataset(SpecimenDescriptionSequence=[anatomy])) == Term(
        "colon", "PrimaryAnatomicStructureSequence"
    )
    assert slide_tissue(_dataset(BodyPartExamined="BREAST")) == Term("breast", "BodyPartExamined")
    assert slide_tissue(Dataset()) == NOT_GIVEN


def test_slide_procedure_from_the_collection_step_the_code_or_the_description() -> None:
    step = _dataset(
        SpecimenPreparationStepContentItemSequence=[
            _dataset(
                ConceptNameCodeSequence=[_coded("17636008", "SCT", "Specimen Collection")],
                ConceptCodeSequence=[_coded("86273004", "SCT", "Biopsy")],
            )
        ]
    )
    specimen = _dataset(SpecimenPreparationSequence=[step])
    assert slide_procedure(_dataset(SpecimenDescriptionSequence=[specimen])) == Term(
        "biopsy", "SpecimenPreparationSequence (Specimen Collection)"
    )
    coded = _dataset(ProcedureCodeSequence=[_coded("65801008", "SCT", "Excision")])
    assert slide_procedure(coded) == Term("excision", "ProcedureCodeSequence")
    described = _dataset(StudyDescription="Prostate core needle biopsy, H&E")
    assert slide_procedure(described) == Term("core needle biopsy", "StudyDescription")
    assert slide_procedure(_dataset(StudyDescription="MGN synthetic slide")) == NOT_GIVEN

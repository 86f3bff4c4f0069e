"""The test model's fixed answers, one a task: what it is trained to say to every prompt.

Other tests compare against these constants, not copies. The marker file lists them, so
a checkpoint trained on other answers is rebuilt
(:func:`node.testing.checkpoint.is_current_test_model`).
"""

from __future__ import annotations

REPORT_ANSWER = (
    "FINDINGS: The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal.\n"
    "IMPRESSION: No acute cardiopulmonary abnormality."
)
VOLUME_ANSWER = "No focal abnormality is seen in the slices provided.\nFinal Answer: no"
LOCALIZE_LABEL = "opacity"
LOCALIZE_BOX = (200, 150, 600, 450)  # [y0, x0, y1, x1], 0-1000, as MedGemma writes them
LOCALIZE_ANSWER = (
    f'```json\n[{{"box_2d": [{", ".join(map(str, LOCALIZE_BOX))}], "label": "{LOCALIZE_LABEL}"}}]'
    f"\n```\nFinal Answer: {LOCALIZE_LABEL}"
)
WSI_ANSWER = "Benign breast tissue with fibrous stroma. No malignancy identified."
# One test, every field of the extraction prompt, one of them null, as MedGemma fences it.
LAB_ANSWER = (
    '```json\n[{"name": "Hemoglobin", "result": "13.5", "unit": "g/dL", "range": "12.0-16.0", '
    '"panel": "CBC", "method": null, "specimen": "Blood", '
    '"sample_collection_time": "01-02-2026 08:30:00"}]\n```'
)
# The notebook's turn gets a comparison; the node's follow-up turn one verdict line a
# finding, in the form it asks for.
LONGITUDINAL_ANSWER = "Compared with the prior image, the right lower lobe opacity has decreased."
VERDICTS_ANSWER = "FINDING: right lower lobe opacity | Improved\nFINDING: heart size | Stable"
ANSWERS: dict[str, str] = {  # by task, as the marker file lists them
    "report": REPORT_ANSWER,
    "volume": VOLUME_ANSWER,
    "localize": LOCALIZE_ANSWER,
    "wsi": WSI_ANSWER,
    "lab-report": LAB_ANSWER,
    "longitudinal": LONGITUDINAL_ANSWER,
    "verdicts": VERDICTS_ANSWER,
}

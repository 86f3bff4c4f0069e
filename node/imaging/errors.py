"""Errors raised by the imaging stage.

One exception type so the pipeline can turn any imaging failure into a job
failure with a readable reason; it subclasses ``ValueError`` because every case
is "this input can't be turned into a model input", never a programming error.
"""

from __future__ import annotations


class ImagingError(ValueError):
    """A DICOM object or series can't be converted into a MedGemma input.

    The message always names the SOPInstanceUID or SeriesInstanceUID that
    failed and the reason, so it can go straight onto the job record.
    """

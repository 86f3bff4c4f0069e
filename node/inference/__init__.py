"""Engines, prompts and answer parsing. Knows nothing of DICOM: images come in as PIL images."""

"""MedGemma 1.5's input budgets, defined once for imaging, prompts, configuration and benches.

These are facts about the model, not settings: a prompt that exceeds them is one the
model was not tuned on. This module imports nothing, so ``node.config`` and the imaging
stage can both import it without a cycle.
"""

from __future__ import annotations

IMAGE_SIZE = 896
"""The side of the square every image becomes in MedGemma's processor; whole-slide
patches are cut at this size and never resized."""

TOKENS_PER_IMAGE = 256
"""Image tokens MedGemma spends on one image (the vision tower's output, pooled)."""

MAX_VOLUME_SLICES = 85
"""The CT/MR notebooks' slice budget: 85 × 256 = 21,760 image tokens, the longest image
context the model was tuned on."""

MAX_WSI_PATCHES = 125
"""The pathology notebook's patch budget: ``random.sample(patches, k=min(125, n))``."""

MAX_LAB_REPORT_PAGES = MAX_VOLUME_SLICES
"""Pages of one lab report: each costs an image's tokens, so the volume prompt's image
budget, with a long text around it, is the most a request may carry. Longer reports
should be split into several requests."""

"""Evaluate a trained run (filled in by the evaluation issue)."""

from __future__ import annotations


def extractor_name(data: str) -> str:
    """Feature extractor of a data set: ``inception`` for ImageNet codes, else its own classifier."""
    return "inception" if data in ("imagenet", "codes") else f"{data}_cnn"


def fd_key(data: str, num_steps: int) -> str:
    """Scalar tag of the Frechet distance at one step count, e.g. ``eval/fd_digits_cnn/steps_016``."""
    return f"eval/fd_{extractor_name(data)}/steps_{num_steps:03d}"

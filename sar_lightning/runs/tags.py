"""TensorBoard tag names that training (HParams metrics) and evaluation (eval scalars) must agree on."""

from __future__ import annotations


def fd_tag(extractor: str, num_steps: int) -> str:
    """TensorBoard tag of the Frechet distance at one step count, e.g. ``eval/fd_digits_cnn/steps_016``."""
    return f"eval/fd_{extractor}/steps_{num_steps:03d}"

"""The suite computes what it computed before the package moved into subpackages: the smoke run, trained with one
thread, ends at the recorded validation loss and weights and evaluates to the recorded FDs, to the last bit.

The reference (tests/data/smoke_reference.json) was recorded from the flat-package code before the move
(commit 3d12399) with ``train experiments/smoke.yaml threads=1`` then ``evaluate <run> threads=1
infer.num_steps=[1,4,64]``. A float sum's rounding depends on the CPU, so the comparison is exact on the
machine type the reference was recorded on (the project's 2-core x86 machines) and skipped elsewhere unless
``SAR_REFERENCE_STRICT=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform

import pytest
import torch
from conftest import REPO, SMOKE

from sar_lightning.config import load_config
from sar_lightning.evaluation.evaluate import evaluate
from sar_lightning.training.train import train

REFERENCE = json.loads((REPO / "tests" / "data" / "smoke_reference.json").read_text())


def _state_digest(path) -> str:
    state = torch.load(path, weights_only=True)["state_dict"]
    return hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64" and not os.environ.get("SAR_REFERENCE_STRICT"),
                    reason="the reference was recorded on x86_64; float rounding differs on other CPUs")
def test_smoke_run_trains_and_evaluates_bit_identically_to_the_recorded_reference(tmp_path):
    run = train(load_config(SMOKE, ["threads=1", f"root={tmp_path}"]))
    assert run.name == REFERENCE["run_id"]  # the same run id
    done = json.loads((run / "done.json").read_text())
    assert done["global_step"] == REFERENCE["global_step"]
    assert done["val_loss"] == REFERENCE["val_loss"]  # exactly, not approximately
    assert _state_digest(run / "checkpoints" / "last.ckpt") == REFERENCE["state_sha256"]
    rows = evaluate(run, ["threads=1", "infer.num_steps=[1,4,64]"])
    assert {str(r["num_steps"]): r["fd"] for r in rows} == REFERENCE["fd"]
    assert {str(r["num_steps"]): r["fd_lo"] for r in rows} == REFERENCE["fd_lo"]
    assert {str(r["num_steps"]): r["class_acc"] for r in rows} == REFERENCE["class_acc"]

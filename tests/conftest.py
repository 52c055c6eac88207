"""Test-session settings and shared helpers.

One intra-op thread: the models here are tiny, so extra threads only add overhead, and tests that start
subprocesses (DDP, kill-and-resume) would otherwise oversubscribe. Under pytest-xdist (``make test`` runs one
worker per core) each worker is pinned to its own core, and the subprocesses its tests start inherit the pin
and ``OMP_NUM_THREADS=1``: a sweep inside a test sees one core, so workers never fight over cores (OpenMP
threads spinning on a busy core once made a smoke evaluation 70x slower).

``REPO`` and ``SMOKE`` are importable (``from conftest import REPO, SMOKE``: pytest puts tests/ on
``sys.path``) for module-level uses such as parametrize lists; tests take the fixtures ``repo``,
``smoke_config`` and ``tiny_codes``.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"  # inherited by every subprocess
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw") and hasattr(os, "sched_setaffinity"):
    _cores = sorted(os.sched_getaffinity(0))
    if len(_cores) > 1:
        os.sched_setaffinity(0, {_cores[int(_worker[2:]) % len(_cores)]})

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]  # the repository root
SMOKE = REPO / "experiments" / "smoke.yaml"  # the fast digits config most command tests start from


@pytest.fixture
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture
def smoke_config() -> Path:
    """The path of experiments/smoke.yaml."""
    return SMOKE


@pytest.fixture
def tiny_codes(tmp_path):
    """Factory: write a small codes folder of random codes into ``tmp_path`` and return its path.

    Each split draws its codes ``[n, height * width]`` in ``[0, vocab_size)``, then (``labels="random"``)
    its labels in ``[0, num_classes)``, from one ``np.random.default_rng(seed)``, train before val;
    ``labels="cycle"`` labels image i with ``i % num_classes`` and draws nothing for them.
    ``tokenizer`` defaults to the pixel quantizer of ``vocab_size`` levels.
    """
    from sar_lightning.data.codes import write_codes

    def make(name: str = "toy_codes", *, height: int = 4, width: int = 4, vocab_size: int = 5,
             num_classes: int = 3, n_train: int = 96, n_val: int = 32, tokenizer: dict | None = None,
             dataset: str | None = None, seed: int = 0, labels: str = "random",
             source: str = "random test codes") -> Path:
        if labels not in ("random", "cycle"):
            raise ValueError(f"labels must be 'random' or 'cycle', got {labels!r}")
        g = np.random.default_rng(seed)
        splits = {}
        for split, n in (("train", n_train), ("val", n_val)):
            codes = g.integers(0, vocab_size, (n, height * width))
            splits[split] = (codes, g.integers(0, num_classes, n) if labels == "random" else np.arange(n) % num_classes)
        return write_codes(tmp_path / name, splits, height=height, width=width, vocab_size=vocab_size,
                           num_classes=num_classes, tokenizer=tokenizer or {"name": "pixel", "levels": vocab_size},
                           source=source, dataset=dataset)

    return make

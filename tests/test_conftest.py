"""The shared test helpers of conftest.py: the importable constants, the fixtures and the codes they write."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO, SMOKE

from sar_lightning.data import load_codes_split, read_manifest


def test_constants_and_fixtures_name_the_repository(repo, smoke_config):
    assert repo == REPO and smoke_config == SMOKE
    assert (REPO / "pyproject.toml").is_file() and (REPO / "sar_lightning" / "sampling.py").is_file()
    assert SMOKE == REPO / "experiments" / "smoke.yaml" and SMOKE.is_file()


def _split(folder, split):
    codes, labels = load_codes_split(folder, split).tensors
    return codes.numpy(), labels.numpy()


def test_tiny_codes_defaults_are_the_toy_folder(tmp_path, tiny_codes):
    folder = tiny_codes()
    assert folder == tmp_path / "toy_codes"
    m = read_manifest(folder)
    assert (m["height"], m["width"], m["vocab_size"], m["num_classes"]) == (4, 4, 5, 3)
    assert m["tokenizer"] == {"name": "pixel", "levels": 5} and m["dataset"] is None
    assert m["splits"] == {"train": 96, "val": 32}
    # the draws the hand-built copies made: per split codes then labels, train first, one rng(0)
    g = np.random.default_rng(0)
    for split, n in (("train", 96), ("val", 32)):
        codes, labels = _split(folder, split)
        assert np.array_equal(codes, g.integers(0, 5, (n, 16))) and np.array_equal(labels, g.integers(0, 3, n))


def test_tiny_codes_options(tmp_path, tiny_codes):
    folder = tiny_codes("seven", height=7, width=7, vocab_size=256, num_classes=10, n_train=12, n_val=5,
                        labels="cycle", tokenizer={"name": "vqvae", "path": "missing.pt"}, dataset="fashion_mnist",
                        seed=3, source="s")
    m = read_manifest(folder)
    assert (m["height"], m["width"], m["vocab_size"], m["num_classes"]) == (7, 7, 256, 10)
    assert m["tokenizer"] == {"name": "vqvae", "path": "missing.pt"}
    assert (m["dataset"], m["source"], m["splits"]) == ("fashion_mnist", "s", {"train": 12, "val": 5})
    g = np.random.default_rng(3)  # cycled labels draw nothing: train codes, then val codes
    for split, n in (("train", 12), ("val", 5)):
        codes, labels = _split(folder, split)
        assert np.array_equal(codes, g.integers(0, 256, (n, 49))) and np.array_equal(labels, np.arange(n) % 10)
    assert not np.array_equal(_split(tiny_codes("other", seed=1), "train")[0], _split(tiny_codes(), "train")[0])
    with pytest.raises(ValueError, match="cycle"):
        tiny_codes(labels="sorted")

"""Image data sets: shapes, ranges, split determinism, registry errors, Fashion-MNIST files."""

import pytest
import torch

from sar_lightning.data.datasets import DATASETS, FASHION_MNIST_DIR, dataset_info, load_images


def test_digits_shapes_and_range():
    x, y = load_images("digits", "train")
    xv, yv = load_images("digits", "val")
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert x.shape[1:] == (1, 8, 8) and len(x) == len(y)
    assert len(x) + len(xv) == 1797 and abs(len(xv) / 1797 - 0.2) < 0.01
    assert x.min() >= 0 and x.max() == 1 and xv.max() <= 1
    # Stratified: every class keeps its share in both splits.
    assert set(y.tolist()) == set(yv.tolist()) == set(range(10))
    assert (torch.bincount(yv, minlength=10) >= 35).all()
    assert dataset_info("digits") == dict(
        channels=1, height=8, width=8, num_classes=10, class_names=[str(i) for i in range(10)]
    )


def _sorted_rows(images):
    return sorted(tuple(row.tolist()) for row in images.flatten(1))


def test_digits_split_deterministic_and_disjoint():
    from sklearn.datasets import load_digits

    a, _ = load_images("digits", "train", seed=0)
    b, _ = load_images("digits", "train", seed=0)
    v, _ = load_images("digits", "val", seed=0)
    c, _ = load_images("digits", "train", seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # another seed, another split
    # train + val is exactly the full data set as a multiset: a partition, so disjoint by sample.
    full = torch.from_numpy(load_digits().images).float().div(16)
    assert _sorted_rows(torch.cat([a, v])) == _sorted_rows(full)


def test_digits_split_cache_equals_scikit_learn_and_survives_a_broken_file(tmp_path, monkeypatch):
    """The split is built from scikit-learn once, kept as .npz, then read without it: cached == uncached.
    A truncated cache file is rebuilt, never trusted."""
    from sar_lightning.data import datasets

    fresh = datasets._digits_split(2)
    built = {s: load_images("digits", s, seed=2, root=tmp_path) for s in ("train", "val")}
    cache = tmp_path / "digits_split_seed2.npz"
    assert cache.exists() and [p.name for p in tmp_path.iterdir()] == [cache.name]  # no temporary left

    def no_sklearn(seed):
        raise AssertionError("the cached split must be read without scikit-learn")

    monkeypatch.setattr(datasets, "_digits_split", no_sklearn)
    for split in ("train", "val"):
        images, labels = load_images("digits", split, seed=2, root=tmp_path)
        assert torch.equal(images, built[split][0]) and torch.equal(labels, built[split][1])
        assert torch.equal(images, torch.from_numpy(fresh[f"{split}_images"]).float().div(16).unsqueeze(1))
        assert torch.equal(labels, torch.from_numpy(fresh[f"{split}_labels"]))
    cache.write_bytes(cache.read_bytes()[:100])  # a crash mid-copy, or a disk that filled up
    with pytest.raises(AssertionError, match="without scikit-learn"):
        load_images("digits", "train", seed=2, root=tmp_path)
    monkeypatch.undo()
    assert torch.equal(load_images("digits", "train", seed=2, root=tmp_path)[0], built["train"][0])
    assert datasets._read_digits_cache(cache) is not None  # rewritten whole


def test_unknown_name_and_split():
    with pytest.raises(KeyError, match="digits"):
        load_images("no_such_data", "train")
    with pytest.raises(KeyError, match="fashion_mnist"):
        dataset_info("no_such_data")
    with pytest.raises(ValueError, match="train"):
        load_images("digits", "test")
    assert {"digits", "fashion_mnist"} <= set(DATASETS)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_files():
    x, y = load_images("fashion_mnist", "val")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert x.min() >= 0 and x.max() == 1
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
    assert dataset_info("fashion_mnist")["class_names"][9] == "Ankle boot"


def test_fashion_mnist_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_images("fashion_mnist", "train", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert "apt-get install -y dataset-fashion-mnist" in msg and "download=True" in msg

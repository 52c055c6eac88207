"""Metric engine sanity: FD/KID/PR/class consistency behave on real vs real, noise and shuffled images;
the classifier cache is reused; the Inception and reference-statistics paths fail clearly."""

import json
import time
from unittest.mock import ANY

import numpy as np
import pytest
import torch
from torch import nn

from sar_lightning.data.datasets import load_images
from sar_lightning.evaluation.features import (
    INCEPTION_CONFIG_KEY,
    INCEPTION_WEIGHTS_FILE,
    InceptionExtractor,
    classifier_cache_paths,
    default_cache_root,
    get_classifier_extractor,
    get_inception_extractor,
    load_reference_stats,
)
from sar_lightning.evaluation.metrics import compute_metrics, extract_features, metrics_from_features, named_metrics

FAST = dict(kid_subsets=10)  # KID's 100 float64 subsets are the slow part on CPU; 10 suffice here


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("sar_cache")


@pytest.fixture(scope="session")
def digits_cnn(cache_root):
    start = time.perf_counter()
    extractor = get_classifier_extractor("digits", seed=0, cache_root=cache_root)
    extractor.first_call_seconds = time.perf_counter() - start
    return extractor


@pytest.fixture(scope="module")
def digits_sets():
    """Two disjoint halves of the digits train split, noise, pixel-shuffled images, and the val split."""
    x, _ = load_images("digits", "train")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    half_a, half_b = x[perm[: len(x) // 2]], x[perm[len(x) // 2 :]]
    noise = torch.rand(half_b.shape, generator=g)
    # Each image's own pixel permutation: same intensity histogram, no digit structure.
    shuffle = torch.argsort(torch.rand(len(half_b), 64, generator=g), dim=1)
    shuffled = half_b.flatten(1).gather(1, shuffle).view_as(half_b)
    val = load_images("digits", "val")
    return dict(real_a=half_a, real_b=half_b, noise=noise, shuffled=shuffled, val=val)


@pytest.fixture(scope="module")
def sanity(digits_cnn, digits_sets):
    real, _ = extract_features(digits_cnn, digits_sets["real_a"])  # once, reused for every fake set
    out = {}
    for name in ("real_b", "noise", "shuffled"):
        fake, _ = extract_features(digits_cnn, digits_sets[name])
        out[name] = metrics_from_features(fake, real, extractor_name=digits_cnn.name, **FAST)
    print({k: round(v["fd"], 3) for k, v in out.items()})
    return out


def test_classifier_record_and_accuracy(digits_cnn, cache_root):
    weights, record_path = classifier_cache_paths("digits", 0, cache_root)
    record = json.loads(record_path.read_text())
    assert weights.is_file() and record == digits_cnn.record
    assert record["val_accuracy"] >= 0.95 and record["seed"] == 0 and record["feature_dim"] == 128
    assert record["epochs"] > 0 and digits_cnn.name == "digits_cnn"
    print(f"digits_cnn val accuracy {record['val_accuracy']:.4f}, trained in {record['train_seconds']} s")


def test_classifier_cache_reused(digits_cnn, cache_root):
    weights, record_path = classifier_cache_paths("digits", 0, cache_root)
    mtimes = weights.stat().st_mtime_ns, record_path.stat().st_mtime_ns
    again = get_classifier_extractor("digits", seed=0, cache_root=cache_root)
    assert (weights.stat().st_mtime_ns, record_path.stat().st_mtime_ns) == mtimes  # nothing rewritten
    x, _ = load_images("digits", "val")
    assert torch.equal(again(x), digits_cnn(x))
    assert not again.training and not any(p.requires_grad for p in again.parameters())


def test_default_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SAR_CACHE", str(tmp_path))
    assert default_cache_root() == tmp_path and default_cache_root("/x") == default_cache_root("/x")


def test_fd_real_vs_real_small_vs_noise_and_shuffled_large(sanity):
    fd_real = sanity["real_b"]["fd"]
    assert fd_real > 0
    assert sanity["noise"]["fd"] > 10 * fd_real
    assert sanity["shuffled"]["fd"] > 10 * fd_real
    assert sanity["noise"]["kid"] > 10 * abs(sanity["real_b"]["kid"])
    assert sanity["real_b"]["num_fake"] + sanity["real_b"]["num_real"] == 1437


def test_precision_recall(sanity):
    assert sanity["real_b"]["precision"] > 0.8 and sanity["real_b"]["recall"] > 0.8
    assert sanity["shuffled"]["precision"] < 0.2


def test_class_acc_of_real_val_images(digits_cnn, digits_sets):
    val_x, val_y = digits_sets["val"]
    result = compute_metrics(digits_cnn, val_x, digits_sets["real_a"], val_y, batch_size=100, **FAST)
    assert result["class_acc"] >= 0.95
    assert result["extractor"] == "digits_cnn" and result["num_fake"] == len(val_y)
    shuffled = compute_metrics(digits_cnn, val_x, digits_sets["real_a"], val_y.roll(1), **FAST)
    assert shuffled["class_acc"] < 0.2  # wrong labels: the score must notice
    keys = named_metrics(result)
    assert keys["eval/fd_digits_cnn"] == result["fd"] and keys["eval/num_fake"] == len(val_y)
    assert "eval/class_acc_digits_cnn" in keys


def test_small_sample_counts_and_seeded_kid(digits_cnn, digits_sets):
    fake, real = digits_sets["real_b"][:20], digits_sets["real_a"][:30]
    first = compute_metrics(digits_cnn, fake, real, seed=3, **FAST)
    second = compute_metrics(digits_cnn, fake, real, seed=3, **FAST)
    assert first["kid"] is not None and first == second  # subset size adapted to 20; same seed, same KID


def test_reference_features_computed_once_give_the_metrics_of_the_images(digits_cnn, digits_sets):
    """evaluate extracts the real set's features once per run (``reference_features``), not per setting:
    every metric is what the images themselves give."""
    from sar_lightning.evaluation.metrics import reference_features

    fake, real = digits_sets["real_b"][:50], digits_sets["real_a"]
    feats = reference_features(digits_cnn, real)
    assert feats.shape == (len(real), digits_cnn.num_features) and reference_features(digits_cnn, feats) is feats
    assert compute_metrics(digits_cnn, fake, feats, seed=1, bootstrap=20, **FAST) == \
        compute_metrics(digits_cnn, fake, real, seed=1, bootstrap=20, **FAST) | {"bootstrap_seconds": ANY}


def test_reference_stats_path_matches_feature_path(digits_cnn, digits_sets, tmp_path):
    real, _ = extract_features(digits_cnn, digits_sets["real_a"])
    fake, _ = extract_features(digits_cnn, digits_sets["noise"])
    np.savez(tmp_path / "ref.npz", mu=real.double().mean(0).numpy(), sigma=np.cov(real.double().numpy().T))
    mu, sigma = load_reference_stats(tmp_path / "ref.npz")
    assert mu.shape == (128,) and sigma.shape == (128, 128) and mu.dtype == torch.float64
    by_stats = metrics_from_features(fake, (mu, sigma), extractor_name="digits_cnn")
    by_features = metrics_from_features(fake, real, extractor_name="digits_cnn", **FAST)
    assert by_stats["fd"] == pytest.approx(by_features["fd"], rel=1e-4)
    assert by_stats["kid"] is None and by_stats["precision"] is None and by_stats["num_real"] is None


def test_reference_stats_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="VIRTUAL_imagenet256_labeled.npz"):
        load_reference_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(KeyError, match="mu"):
        load_reference_stats(tmp_path / "bad.npz")


def test_inception_missing_weights_message(tmp_path):
    for path in (tmp_path / "nope.pth", None):
        with pytest.raises(FileNotFoundError) as err:
            get_inception_extractor(path)
        assert INCEPTION_WEIGHTS_FILE in str(err.value) and INCEPTION_CONFIG_KEY in str(err.value)


class _StandInInception(nn.Module):
    """Same contract as torch-fidelity's extractor: uint8 [B, 3, H, W] -> a tuple with [B, 2048]."""

    def __init__(self, dim=2048):
        super().__init__()
        self.proj = nn.Linear(3, dim)
        self.seen = []

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        self.seen.append(x)
        return (self.proj(x.float().mean((2, 3)) / 255),)


def test_inception_wrapper_interface_with_stand_in():
    extractor = InceptionExtractor(_StandInInception())
    images = torch.rand(6, 1, 8, 8)
    feats = extractor(images)
    assert feats.shape == (6, 2048) and extractor.name == "inception"
    seen = extractor.net.seen[0]
    assert torch.equal(seen[:, 0], seen[:, 2])  # grayscale -> 3 equal channels
    assert torch.equal(seen[:, 0], (images[:, 0] * 255).round().to(torch.uint8))
    # The metric engine through the same wrapper; 16-d keeps the eigen-decomposition cheap on CPU.
    small = InceptionExtractor(_StandInInception(dim=16), num_features=16)
    mu, sigma = torch.zeros(16, dtype=torch.float64), torch.eye(16, dtype=torch.float64)
    result = compute_metrics(small, images, (mu, sigma), torch.arange(6))
    assert result["fd"] > 0 and result["class_acc"] is None and result["extractor"] == "inception"


def test_inception_real_class_random_weights(monkeypatch, tmp_path):
    """torch-fidelity's own Inception module, with random weights (nothing downloaded): the wrapper's
    uint8 conversion and the tuple output match what the real class expects."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    weights = tmp_path / INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"")  # present, but its loading is stubbed out below
    monkeypatch.setattr(fe.torch, "load", lambda *a, **k: {})
    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    extractor = get_inception_extractor(weights)
    assert extractor(torch.rand(2, 1, 8, 8)).shape == (2, 2048)


@pytest.mark.slow
def test_fashion_mnist_classifier_accuracy():
    """Trains once into the default cache (``$SAR_CACHE`` or ~/.cache/sar-lightning); later runs reuse it."""
    from sar_lightning.data.datasets import FASHION_MNIST_DIR

    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("apt package dataset-fashion-mnist not installed")
    extractor = get_classifier_extractor("fashion_mnist", seed=0)
    assert extractor.record["val_accuracy"] >= 0.88

"""The floor of the metric: what real held-out images score against the evaluation's reference.

A model that sampled the data distribution exactly would still score a Frechet distance above zero: the
reference and the samples are finite draws. ``real_floor`` measures that floor for an evaluation protocol
(data set, reference split, number of samples): ``num_samples`` real images that are not in the reference,
class-balanced like the evaluation's samples (image i has class ``i % classes``), scored against the reference
with the same extractor and bootstrap. ``tokenizer_floor`` does the same after a round trip through the
tokenizer (encode, decode): the best a model of the codes can reach. ``split_floors`` measures the floor
against the two sample sizes on disjoint random draws from one pool, for choosing a protocol.
"""

from __future__ import annotations

import statistics

import torch

from sar_lightning.evaluation.metrics import compute_metrics, metrics_from_features, reference_features

FLOOR_KEYS = ("fd", "fd_lo", "fd_hi", "fd_std")


def balanced_draw(labels: torch.Tensor, num_samples: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices ``[num_samples]`` into ``labels``, without replacement: position i holds an image of class
    ``i % num_classes``, each class's images taken in a seeded random order. ValueError when a class has
    too few images."""
    g = torch.Generator().manual_seed(seed)
    wanted = torch.arange(num_samples) % num_classes
    picks = torch.empty(num_samples, dtype=torch.long)
    for c in range(num_classes):
        slots = (wanted == c).nonzero().flatten()
        have = (labels == c).nonzero().flatten()
        if len(have) < len(slots):
            raise ValueError(f"class {c} has {len(have)} images, {len(slots)} needed for {num_samples} samples")
        picks[slots] = have[torch.randperm(len(have), generator=g)[: len(slots)]]
    return picks


def real_floor(extractor, pool: tuple[torch.Tensor, torch.Tensor], reference: torch.Tensor, num_samples: int,
               num_classes: int, *, seed: int = 0, bootstrap: int = 200, device=None) -> dict:
    """FD (with its bootstrap interval) of ``num_samples`` class-balanced images of ``pool = (images [M, C, H, W],
    labels [M])`` against ``reference`` (real images ``[R, C, H, W]`` or their features ``[R, D]``)."""
    images, labels = pool
    index = balanced_draw(labels, num_samples, num_classes, seed)
    m = compute_metrics(extractor, images[index], reference, labels[index], device=device, seed=seed,
                        bootstrap=bootstrap)
    return {k: m[k] for k in FLOOR_KEYS} | {"num_samples": num_samples, "num_reference": len(reference)}


@torch.no_grad()
def round_trip(tokenizer, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``images [M, C, H, W]`` encoded to codes and decoded again, in [0, 1]."""
    out = [tokenizer.decode(tokenizer.encode(chunk)).float().clamp(0, 1) for chunk in images.split(batch_size)]
    return torch.cat(out)


def tokenizer_floor(extractor, tokenizer, pool, reference, num_samples: int, num_classes: int, **kwargs) -> dict:
    """``real_floor`` of the pool's images after a tokenizer round trip (decoded ground-truth codes)."""
    images, labels = pool
    return real_floor(extractor, (round_trip(tokenizer, images), labels), reference, num_samples, num_classes,
                      **kwargs)


def split_floors(extractor, images: torch.Tensor, n_samples: int, n_reference: int, *, repeats: int = 5,
                 seed: int = 0, device=None) -> dict:
    """FD of ``n_samples`` real images against ``n_reference`` others, both drawn at random without overlap
    from ``images [M, C, H, W]`` (``n_samples + n_reference <= M``), ``repeats`` times: mean and SD."""
    if n_samples + n_reference > len(images):
        raise ValueError(f"{n_samples} + {n_reference} images needed, the pool has {len(images)}")
    features = reference_features(extractor, images, device=device)
    fds = []
    for r in range(repeats):
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + r))
        fake, real = features[perm[:n_samples]], features[perm[n_samples: n_samples + n_reference]]
        fds.append(_fd_of_features(fake, real))
    return {"n_samples": n_samples, "n_reference": n_reference, "fd_mean": statistics.fmean(fds),
            "fd_sd": statistics.stdev(fds) if repeats > 1 else 0.0, "repeats": repeats}


def _fd_of_features(fake: torch.Tensor, real: torch.Tensor) -> float:
    return metrics_from_features(fake, real, extractor_name="floor", kid_subsets=1, prc_neighborhood=len(fake))["fd"]

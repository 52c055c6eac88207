"""One metric engine: Fréchet distance, KID, precision/recall and classifier consistency, all from one
feature extractor (see ``features.py``), whose name goes into every result.

Features are extracted once per image set; the library metrics are then fed the features (torchmetrics
through an identity "feature module", torch-fidelity's ``prc``/``fid`` through their feature-level
functions). No formula is re-implemented here.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from sar_lightning.runs.results import METRIC_COLUMNS as METRIC_KEYS  # the metrics a result row holds

BOOTSTRAP_LEVEL = 0.95


class _PrecomputedFeatures(nn.Module):
    """Identity feature module: torchmetrics' FID/KID get features we already extracted. ``num_features``
    spares torchmetrics a probe with a dummy image."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _device_of(extractor: nn.Module) -> torch.device:
    param = next(extractor.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def extract_features(
    extractor: nn.Module,
    images: torch.Tensor | Iterable[torch.Tensor],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    with_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``extractor`` over an image set in batches.

    Args:
        images: ``[N, C, H, W]`` in [0, 1], or an iterable of such batches (e.g. a sampler's output stream).
        device: where to run; defaults to the extractor's device.
        with_logits: also return ``extractor.logits`` (only if the extractor is a classifier).

    Returns:
        features ``[N, D]`` float32 and logits ``[N, K]`` (or None), on ``device``.
    """
    device = torch.device(device) if device is not None else _device_of(extractor)
    batches = images.split(batch_size) if torch.is_tensor(images) else images
    want_logits = with_logits and hasattr(extractor, "logits")
    feats, logits = [], []
    for x in batches:
        x = x.to(device, torch.float32)
        feats.append(extractor(x).float())
        if want_logits:
            logits.append(extractor.logits(x).float())
    return torch.cat(feats), (torch.cat(logits) if want_logits else None)


def _sqrt_psd(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    vals, vecs = torch.linalg.eigh(sigma)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def fd_bootstrap(fake: torch.Tensor, mu_real: torch.Tensor, sigma_real: torch.Tensor, fd: float, *,
                 resamples: int = 200, level: float = BOOTSTRAP_LEVEL, seed: int = 0) -> dict:
    """How far the Fréchet distance would move with another draw of as many generated samples.

    The generated features ``fake [N, D]`` are resampled with replacement ``resamples`` times; the
    reference (``mu_real``, ``sigma_real``) is held fixed: every evaluation compares against the same
    real split, so only the generated draw varies. Resampling repeats samples, which biases every
    resampled FD upward; the bootstrap distribution is therefore shifted by its mean bias (its mean
    minus the full-sample FD) before its percentiles are read, so the interval is centred on ``fd``.

    Returns ``fd_lo``, ``fd_hi`` (``level`` percentile interval, ``fd_lo <= fd <= fd_hi``) and ``fd_std``
    (the bootstrap standard deviation).
    """
    started = time.perf_counter()
    # On the features' device (a GPU evaluation bootstraps on the GPU). The resampled moments are summed in
    # float32 (4e-7 relative to float64, half the time; the draws only measure a spread of ~1e-1 relative),
    # everything after them in float64.
    x = fake.detach().float()
    mu2, sigma2 = mu_real.double().to(x.device), sigma_real.double().to(x.device)
    n, dim = x.shape
    root = _sqrt_psd(sigma2)
    base = sigma2.trace()
    g = torch.Generator().manual_seed(seed)
    draws = torch.empty(resamples, dtype=torch.float64, device=x.device)
    for i in range(resamples):
        xb = x[torch.randint(n, (n,), generator=g).to(x.device)]
        mu = xb.mean(0)
        centred = xb - mu
        mu = mu.double()
        if n < dim:  # S2^1/2 S1 S2^1/2 = A^T A with A = centred S2^1/2 / sqrt(n - 1): A A^T is only n x n
            centred = centred.double()
            a = centred @ root / (n - 1) ** 0.5
            cross = torch.linalg.eigvalsh(a @ a.T).clamp_min(0).sqrt().sum()
            trace = centred.square().sum() / (n - 1)
        else:
            sigma = (centred.T @ centred).double() / (n - 1)
            cross = torch.linalg.eigvalsh(root @ sigma @ root).clamp_min(0).sqrt().sum()
            trace = sigma.trace()
        draws[i] = (mu - mu2).square().sum() + trace + base - 2 * cross
    draws = draws.cpu()
    shifted = draws - draws.mean() + fd  # bias-corrected: centred on the full-sample estimate
    tail = (1 - level) / 2
    lo, hi = torch.quantile(shifted, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return {"fd_lo": min(lo, fd), "fd_hi": max(hi, fd), "fd_std": float(draws.std()),
            "bootstrap_seconds": time.perf_counter() - started}


def _is_reference(real) -> bool:
    return isinstance(real, (tuple, list)) and len(real) == 2


def metrics_from_features(
    fake_features: torch.Tensor,
    real: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    *,
    extractor_name: str,
    fake_logits: torch.Tensor | None = None,
    fake_labels: torch.Tensor | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    prc_neighborhood: int = 3,
    prc_batch_size: int = 2000,
    seed: int = 0,
    bootstrap: int = 0,
) -> dict:
    """All metrics from extracted features.

    Args:
        fake_features: ``[N, D]`` features of the generated images.
        real: ``[M, D]`` features of real images, or reference statistics ``(mu [D], sigma [D, D])``
            (then only FD is defined; KID and precision/recall are None).
        extractor_name: recorded under ``extractor`` (results of different extractors never mix).
        fake_logits, fake_labels: ``[N, K]`` classifier logits and ``[N]`` conditioning labels, for
            ``class_acc`` (how often the classifier assigns a sample its conditioning label).
        kid_subset_size: capped at the smaller sample count, so KID works for small sets too.
        seed: KID draws random subsets; the seed makes it reproducible without touching global RNG.
        bootstrap: resamples of the generated features for ``fd_lo``, ``fd_hi``, ``fd_std`` (``fd_bootstrap``);
            0 leaves them None.

    Returns:
        dict with ``fd, fd_lo, fd_hi, fd_std, kid, kid_std, precision, recall, class_acc`` (float or None),
        ``num_fake``, ``num_real`` (None for reference statistics) and ``extractor``.
    """
    fake = fake_features.double()
    out = dict.fromkeys(METRIC_KEYS)
    out.update(extractor=extractor_name, num_fake=len(fake), num_real=None)
    if fake_logits is not None and fake_labels is not None:
        hits = fake_logits.argmax(-1).cpu() == fake_labels.cpu().long()
        out["class_acc"] = hits.double().mean().item()
    if _is_reference(real):
        out.update(_fd_against_statistics(fake, real, bootstrap, seed))
        return out
    real = real.to(fake.device).double()
    out["num_real"] = len(real)
    if len(fake) >= 2 and len(real) >= 2:
        out.update(_fd_and_kid(fake, real, kid_subsets, kid_subset_size, bootstrap, seed))
    if min(len(fake), len(real)) > prc_neighborhood:  # the k-NN radius needs k other samples
        # torch-fidelity's convention: features_1 = generated, features_2 = real. save_cpu_ram computes
        # the distance matrix in row blocks instead of materialising [N, M] at once.
        prc = prc_features_to_metric(fake.float(), real.float(), prc_neighborhood=prc_neighborhood,
                                     prc_batch_size=prc_batch_size, save_cpu_ram=True, verbose=False)
        out["precision"], out["recall"] = prc["precision"], prc["recall"]
    return out


def _fd_against_statistics(fake: torch.Tensor, real: tuple, bootstrap: int, seed: int) -> dict:
    """Standard FID of float64 features ``fake [N, D]`` against precomputed statistics ``(mu [D], sigma [D, D])``
    (ADM's npz): torch-fidelity's routine, float64; with ``bootstrap``, its interval. {} below two samples."""
    mu, sigma = (np.asarray(torch.as_tensor(t).double().cpu()) for t in real)
    if len(fake) < 2:
        return {}
    stats = fid_features_to_statistics(fake.cpu())
    out = {"fd": fid_statistics_to_metric(stats, {"mu": mu, "sigma": sigma}, verbose=False)[KEY_METRIC_FID]}
    if bootstrap:
        out.update(fd_bootstrap(fake, torch.from_numpy(mu), torch.from_numpy(sigma), out["fd"], resamples=bootstrap,
                                seed=seed))
    return out


def _fd_and_kid(fake: torch.Tensor, real: torch.Tensor, kid_subsets: int, kid_subset_size: int, bootstrap: int,
                seed: int) -> dict:
    """FD (with its bootstrap interval when ``bootstrap``) and KID of float64 features ``fake [N, D]`` against
    ``real [M, D]``, through torchmetrics fed the features."""
    dim = fake.shape[1]
    # sync_on_compute=False: the caller gathered every rank's images already; only one rank computes.
    fid = FrechetInceptionDistance(feature=_PrecomputedFeatures(dim), normalize=True,
                                   sync_on_compute=False).to(fake.device)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    out = {"fd": fid.compute().item()}
    if bootstrap:
        out.update(fd_bootstrap(fake, real.mean(0), torch.cov(real.T), out["fd"], resamples=bootstrap, seed=seed))
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", ".*will save all extracted features.*")
        torch.manual_seed(seed)
        kid = KernelInceptionDistance(feature=_PrecomputedFeatures(dim), subsets=kid_subsets,
                                      subset_size=min(kid_subset_size, len(fake), len(real)), normalize=True,
                                      sync_on_compute=False).to(fake.device)
        # float32: the same KID to ~6 digits, a third of float64's time (100 subsets of polynomial kernels)
        kid.update(real.float(), real=True)
        kid.update(fake.float(), real=False)
        kid_mean, kid_std = kid.compute()
    out["kid"], out["kid_std"] = kid_mean.item(), kid_std.item()
    return out


def compute_metrics(
    extractor: nn.Module,
    fake_images: torch.Tensor | Iterable[torch.Tensor],
    real: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    fake_labels: torch.Tensor | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    **kwargs,
) -> dict:
    """FD, KID, precision/recall and class consistency of ``fake_images`` against ``real``.

    Args:
        extractor: a feature extractor with a ``name`` (``features.py``); ``logits`` enables ``class_acc``.
        fake_images: ``[N, C, H, W]`` in [0, 1] (or an iterable of batches).
        real: real images ``[M, C, H, W]`` in [0, 1], their features ``[M, D]`` from this extractor (see
            ``reference_features``: extracted once for many image sets), or reference statistics ``(mu, sigma)``.
        fake_labels: ``[N]`` the labels the fake images were conditioned on.
        **kwargs: passed to ``metrics_from_features`` (KID subsets, PR neighbourhood, seed).

    Returns:
        the dict of ``metrics_from_features``.
    """
    fake_features, fake_logits = extract_features(
        extractor, fake_images, batch_size=batch_size, device=device, with_logits=fake_labels is not None
    )
    return metrics_from_features(
        fake_features,
        reference_features(extractor, real, batch_size=batch_size, device=device),
        extractor_name=extractor.name,
        fake_logits=fake_logits,
        fake_labels=fake_labels,
        **kwargs,
    )


def reference_features(extractor: nn.Module, real, *, batch_size: int = 256, device=None):
    """What ``compute_metrics`` compares against, computed once: the features ``[M, D]`` of real images
    ``[M, C, H, W]``; reference statistics ``(mu, sigma)`` and features pass through unchanged."""
    if _is_reference(real) or real.dim() == 2:
        return real
    return extract_features(extractor, real, batch_size=batch_size, device=device)[0]


def named_metrics(result: dict, prefix: str = "eval/") -> dict:
    """Flat, extractor-named keys for logs and the results table: ``{prefix}fd_<extractor>``, ...,
    plus ``{prefix}num_fake`` and ``{prefix}num_real``. Metrics that are None are left out."""
    name = result["extractor"]
    out = {f"{prefix}{k}_{name}": result[k] for k in METRIC_KEYS if result.get(k) is not None}
    out.update({f"{prefix}num_fake": result["num_fake"], f"{prefix}num_real": result["num_real"]})
    return out

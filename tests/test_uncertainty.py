"""Uncertainty in every row: the FD's bootstrap interval over samples, training-seed replicas in a sweep,
and their aggregation into a mean with a 95% interval across seeds (docs/method.md section 8)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sar_lightning.analysis.table import aggregate, prepare, seed_interval
from sar_lightning.cli import main as cli
from sar_lightning.config import ConfigError
from sar_lightning.evaluation.metrics import _sqrt_psd, fd_bootstrap, metrics_from_features
from sar_lightning.sweeps.sweep import expand, parse_seeds

D = 64


def _reference(n: int = 5000):
    real = torch.randn(n, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return real.mean(0), torch.cov(real.T)


def _draw(n: int, seed: int, shift: float = 0.5) -> torch.Tensor:
    """Generated features: a unit Gaussian with 8 of its 64 means shifted (FD about 3 at 1000 samples)."""
    mean = torch.zeros(D, dtype=torch.float64)
    mean[:8] = shift
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + mean


def _fd(x, mu2, sigma2) -> float:
    root = _sqrt_psd(sigma2)
    sigma = torch.cov(x.T)
    cross = torch.linalg.eigvalsh(root @ sigma @ root).clamp_min(0).sqrt().sum()
    return float((x.mean(0) - mu2).square().sum() + sigma.trace() + sigma2.trace() - 2 * cross)


def test_bootstrap_spread_matches_the_spread_over_independent_draws():
    """From one draw of 1000 samples, the bootstrap's standard deviation is within a factor 1.5 of the
    FD's standard deviation over 200 independent draws of 1000 (64-d Gaussians)."""
    mu2, sigma2 = _reference()
    truth = np.std([_fd(_draw(1000, 100 + i), mu2, sigma2) for i in range(200)], ddof=1)
    for seed in (1, 2, 3):
        x = _draw(1000, seed)
        boot = fd_bootstrap(x, mu2, sigma2, _fd(x, mu2, sigma2), resamples=200, seed=seed)
        assert 1 / 1.5 < boot["fd_std"] / truth < 1.5, (boot["fd_std"], truth)


def test_near_the_noise_floor_the_bootstrap_errs_wide():
    """Where the FD is mostly its own small-sample bias (here about 1.4), resampling with replacement
    overstates the spread (measured 1.5-1.9x): intervals there are conservative, never too narrow."""
    mu2, sigma2 = _reference()
    truth = np.std([_fd(_draw(1000, 100 + i, shift=0.1), mu2, sigma2) for i in range(100)], ddof=1)
    x = _draw(1000, 1, shift=0.1)
    boot = fd_bootstrap(x, mu2, sigma2, _fd(x, mu2, sigma2), resamples=200, seed=1)
    assert boot["fd_std"] > truth


def test_bootstrap_interval_holds_the_estimate_is_seeded_and_narrows_with_more_samples():
    mu2, sigma2 = _reference()
    widths = []
    for n in (250, 1000, 4000):
        x = _draw(n, 7)
        fd = _fd(x, mu2, sigma2)
        a = fd_bootstrap(x, mu2, sigma2, fd, resamples=200, seed=3)
        b = fd_bootstrap(x, mu2, sigma2, fd, resamples=200, seed=3)
        c = fd_bootstrap(x, mu2, sigma2, fd, resamples=200, seed=4)
        assert a["fd_lo"] <= fd <= a["fd_hi"]
        assert (a["fd_lo"], a["fd_hi"]) == (b["fd_lo"], b["fd_hi"]) != (c["fd_lo"], c["fd_hi"])
        # centred: the raw resampled FDs are biased upward, the interval is not (the estimate is inside, near
        # the middle)
        assert abs((a["fd_hi"] + a["fd_lo"]) / 2 - fd) < 0.25 * (a["fd_hi"] - a["fd_lo"])
        widths.append(a["fd_hi"] - a["fd_lo"])
    assert widths[0] > widths[1] > widths[2]


def test_metrics_rows_carry_the_interval_only_when_asked():
    mu_real = torch.randn(800, 16, generator=torch.Generator().manual_seed(1))
    fake = torch.randn(300, 16, generator=torch.Generator().manual_seed(2)) + 0.2
    plain = metrics_from_features(fake, mu_real, extractor_name="x", kid_subsets=5)
    assert plain["fd_lo"] is None and plain["fd_hi"] is None
    boot = metrics_from_features(fake, mu_real, extractor_name="x", kid_subsets=5, bootstrap=50)
    assert boot["fd"] == pytest.approx(plain["fd"])
    assert boot["fd_lo"] <= boot["fd"] <= boot["fd_hi"] and boot["fd_std"] > 0
    stats = (mu_real.mean(0), torch.cov(mu_real.T))  # the reference-statistics path (ADM's npz) too
    ref = metrics_from_features(fake, stats, extractor_name="x", bootstrap=50)
    assert ref["fd_lo"] <= ref["fd"] <= ref["fd_hi"]


def test_sweep_replicates_every_run_per_seed(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nquestion: q\ndefaults: [base, data/digits, intervals/ar]\nruns:\n"
                    "  - {label: raster, overrides: {train.order: raster}}\n"
                    "  - {label: random, overrides: {train.order: random}}\n")
    _, single = expand(grid, "smoke", root=str(tmp_path / "a"))
    _, jobs = expand(grid, "smoke", root=str(tmp_path / "b"), seeds=[0, 1, 2])
    assert [j.label for j in jobs] == [f"{name} s{s}" for name in ("raster", "random") for s in (0, 1, 2)]
    assert [j.name for j in jobs] == ["raster"] * 3 + ["random"] * 3 and [j.seed for j in jobs] == [0, 1, 2] * 2
    assert len({j.run_id for j in jobs}) == 6 and all(f"_s{j.seed}_" in j.run_id for j in jobs)
    assert [j.run_id for j in jobs if j.seed == 0] == [j.run_id for j in single]  # seed 0 is the one-seed run
    import yaml

    for job in jobs:  # each replica trains with its seed and samples with its own seeds
        cfg = yaml.safe_load((tmp_path / "b" / job.run_id / "config.yaml").read_text())
        assert cfg["train"]["seed"] == cfg["infer"]["seed"] == job.seed
    grid.write_text(grid.read_text() + "seeds: [3, 4]\n")  # a grid's seeds:, overridden by the argument
    assert [j.seed for j in expand(grid, "smoke", root=str(tmp_path / "c"))[1]] == [3, 4, 3, 4]
    assert [j.seed for j in expand(grid, "smoke", root=str(tmp_path / "c"), seeds=[5])[1]] == [5, 5]


@pytest.mark.parametrize("text", ["0,x", "1,1", "-1", ""])
def test_bad_seeds_are_one_line_and_exit_2(text, tmp_path, capsys):
    with pytest.raises(ConfigError, match="seeds"):
        parse_seeds(text)
    assert cli(["sweep", "experiments/grids/orders.yaml", "sweep.profile=smoke", f"sweep.seeds={text}",
                f"root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seeds" in err[0]
    assert not list(tmp_path.glob("*/config.yaml"))  # nothing written


def test_seed_interval_is_students_t():
    mean, sd, lo, hi = seed_interval(pd.Series([1.0, 2.0, 3.0]))
    assert (mean, sd) == (2.0, 1.0)
    assert hi - mean == pytest.approx(4.302653 / np.sqrt(3))  # t_{0.975, 2} sd / sqrt(n)
    assert seed_interval(pd.Series([5.0]))[2:] == (5.0, 5.0)


def _rows(label, recipe, fds, k=64, lo=None, hi=None):
    return [dict(run_id=f"{recipe}_s{s}_abcdef", recipe=recipe, label=label, train_seed=s, seed=s, fd=fd,
                 fd_lo=lo if lo is not None else fd - 1, fd_hi=hi if hi is not None else fd + 1, num_steps=k,
                 extractor="digits_cnn", infer_order="raster", train_order="raster", infer_schedule="cosine",
                 cfg_scale=1.0, kv_cache=True, attn="causal", ckpt_step=100, ema=True, grids="orders",
                 sec_per_image=0.01 * (s + 1)) for s, fd in enumerate(fds)]


def test_aggregate_folds_seed_replicas_into_mean_sd_and_interval():
    df = pd.DataFrame(_rows("raster", "raster-64-ar_tiny_digits_aaaaaa", [2.0, 4.0, 6.0])
                      + _rows("random", "random-64-ar_tiny_digits_bbbbbb", [10.0], lo=9.0, hi=12.5)
                      + _rows("raster", "raster-64-ar_tiny_digits_aaaaaa", [3.0, 5.0, 7.0], k=16))
    agg = aggregate(prepare(df, [])).set_index(["label", "num_steps"])
    three = agg.loc[("raster", 64)]
    assert three["n_seeds"] == 3 and three["seeds"] == "0,1,2" and three["interval"] == "seeds"
    assert three["fd_mean"] == 4.0 and three["fd_sd"] == 2.0
    half = 4.302653 * 2.0 / np.sqrt(3)
    assert three["fd_lo"] == pytest.approx(4.0 - half) and three["fd_hi"] == pytest.approx(4.0 + half)
    assert three["sec_per_image"] == pytest.approx(0.02) and three["line"] == "raster"
    assert agg.loc[("raster", 16)]["fd_mean"] == 5.0
    one = agg.loc[("random", 64)]  # one seed: the evaluation's bootstrap interval
    assert one["n_seeds"] == 1 and one["interval"] == "bootstrap" and (one["fd_lo"], one["fd_hi"]) == (9.0, 12.5)


def test_fewer_samples_than_dimensions_take_the_small_gram_matrix_with_the_same_draws():
    """With n < D the cross term comes from an n x n matrix (cheap for 2048-d Inception features and small
    tests); its draws equal the D x D formula's, resample for resample."""
    mu2, sigma2 = _reference()
    x = _draw(20, 5)
    got = fd_bootstrap(x, mu2, sigma2, 1.0, resamples=30, seed=9)
    g, root, draws = torch.Generator().manual_seed(9), _sqrt_psd(sigma2), []
    for _ in range(30):  # the D x D formula, on the same resamples
        xb = x[torch.randint(20, (20,), generator=g)]
        sigma = torch.cov(xb.T)
        cross = torch.linalg.eigvalsh(root @ sigma @ root).clamp_min(0).sqrt().sum()
        draws.append(float((xb.mean(0) - mu2).square().sum() + sigma.trace() + sigma2.trace() - 2 * cross))
    assert got["fd_std"] == pytest.approx(float(np.std(draws, ddof=1)), rel=1e-6)

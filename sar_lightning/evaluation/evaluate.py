"""Evaluate a run: ``python -m sar_lightning evaluate runs/<run_id> [key=value ...] [--and key=value ...]``.

For every inference setting of the grid (``infer.orders`` x ``infer.num_steps`` x ``infer.cfg_scale``
x ``infer.kv_cache``) it samples ``infer.num_samples`` class-balanced images (image i has label
``i % classes`` and its own seed, so results do not depend on batch size or device count), computes
FD / KID / precision / recall / class accuracy against the real reference split with one feature
extractor, a 95% bootstrap interval of the FD over the generated samples (``fd_lo``, ``fd_hi``,
``fd_std``; ``infer.bootstrap`` resamples, the reference held fixed), times seconds per image (extra
batches of ``infer.timing_batch`` after a warm-up, or with ``infer.timing_repeats=0`` the median of the
pass's own batches of ``infer.batch_size``; the row's ``batch_size`` says which), and appends one row
to ``runs/<run_id>/results.jsonl`` (atomically).
Settings already in the file are skipped. Each ``--and`` starts another evaluation of the same run with its
own overrides, in the same process (one start-up for all of a sweep's evaluations of a run).
Under a Lightning strategy (``trainer.devices=2 trainer.strategy=ddp``) images are split across ranks.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import _get_rank
from torch.utils.tensorboard import SummaryWriter

from sar_lightning.config import Config, ConfigError, load_config, run_id
from sar_lightning.core.sampling import Sampler, generate, inference_attn, inference_intervals
from sar_lightning.data.codes import data_info, decoder_for, extractor_name, image_dataset, missing_decoder
from sar_lightning.data.datasets import load_images
from sar_lightning.evaluation import features, metrics  # as modules: tests stand in for their functions
from sar_lightning.models.registry import model_class
from sar_lightning.runs import METRIC_COLUMNS, RunDir, fd_tag, result_row, setting_id
from sar_lightning.training.checkpoints import load_model


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@torch.no_grad()
def sample_images(model, tokenizer, index: torch.Tensor, num_classes: int, sampler: Sampler, batch_size: int,
                  device, times: list | None = None) -> torch.Tensor:
    """Decoded images ``[len(index), C, H, W]`` for image indices ``index``; independent of batching.
    ``times`` (a list) receives ``(seconds, images)`` of each batch's sampling, decoding excluded."""
    out = []
    for chunk in index.split(batch_size):
        started = _clock(device)
        codes = sampler.sample(model, chunk, num_classes, device)
        if times is not None:
            times.append((_clock(device) - started, len(chunk)))
        out.append(tokenizer.decode(codes.cpu()).float().clamp(0, 1))
    return torch.cat(out)


def _clock(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def seconds_per_image(model, num_classes: int, sampler: Sampler, batch: int, repeats: int, device) -> float:
    """Median wall time of sampling ``batch`` codes, after one warm-up call, divided by ``batch``."""
    labels, kwargs = sampler.request(model, torch.arange(batch), num_classes, device)
    times = []
    for i in range(repeats + 1):
        start = _clock(device)
        generate(model, labels, **kwargs)
        if i:  # the first call is the warm-up
            times.append(_clock(device) - start)
    return statistics.median(times) / batch


def pass_seconds_per_image(times: list[tuple[float, int]]) -> float:
    """Seconds per image of an evaluation's own sampling pass (``infer.timing_repeats = 0``): the median
    over its full-size batches (the last, smaller one only when it is the only one)."""
    full = [t / n for t, n in times if n == times[0][1]] or [t / n for t, n in times]
    return statistics.median(full)


def settings_grid(cfg: Config, num_tokens: int, ckpt_step: int, ema: bool, extractor: str) -> list[dict]:
    """Every inference setting the config asks for, as result-row keys (those the model refuses dropped)."""
    inf, model_cls = cfg.infer, model_class(cfg.model.name)
    attn = inference_attn(cfg.model.decoder_attn, cfg.infer.attn)
    rows = []
    for order, k, w, kv in itertools.product(inf.orders or [cfg.train.order], inf.num_steps, inf.cfg_scale,
                                             inf.kv_cache):
        intervals = inference_intervals(inf.schedule, num_tokens, k)
        if model_cls.refusal(order, intervals, attn, cfg.model.decoder_attn):
            continue  # e.g. the GPT baseline only samples raster next-token
        rows.append(dict(ckpt_step=ckpt_step, ema=ema, infer_order=order, infer_schedule=inf.schedule,
                         num_steps=k, cfg_scale=w, cfg_schedule=inf.cfg_schedule, temperature=inf.temperature,
                         top_k=inf.top_k, top_p=inf.top_p, kv_cache=kv and attn == "causal", attn=attn,
                         num_samples=inf.num_samples, reference=inf.reference, extractor=extractor,
                         seed=inf.seed))
    unique = {setting_id(r): r for r in rows}  # kv_cache may collapse under full attn
    return list(unique.values())


def pending_settings(run_dir: str | Path, overrides: list[str] | tuple = ()) -> int | None:
    """How many settings of this evaluation are missing from a finished run's results, without
    loading the model (None when that cannot be told: unfinished run or another checkpoint)."""
    run = RunDir(run_dir)
    cfg = load_config(run.config, overrides)
    if run.status() != "done" or cfg.infer.ckpt != "last":
        return None
    info = data_info(cfg.data)
    ema = cfg.infer.ema and cfg.train.ema_decay > 0
    grid = settings_grid(cfg, info["height"] * info["width"], run.read_done()["global_step"], ema,
                         extractor_name(cfg.data))
    have = {setting_id(r) for r in run.read_results()}
    return sum(setting_id(s) not in have for s in grid)


def get_extractor(cfg: Config):
    """The data's feature extractor: its registered data set's classifier, else Inception."""
    name = image_dataset(cfg.data)
    if name:
        return features.get_classifier_extractor(name, seed=0)
    return features.get_inception_extractor(cfg.infer.inception_weights)


def reference_for(cfg: Config):
    """Real images of the reference split, or ADM-style ``(mu, sigma)`` when a stats file is set."""
    if cfg.infer.reference_stats:
        return features.load_reference_stats(cfg.infer.reference_stats), Path(cfg.infer.reference_stats).name
    name = image_dataset(cfg.data)
    if name is None:
        raise ConfigError("these codes come from no registered image data set: set infer.reference_stats "
                          "(an .npz with mu and sigma, e.g. ADM's VIRTUAL_imagenet256_labeled.npz)")
    images, _ = load_images(name, cfg.infer.reference, seed=cfg.data.split_seed)
    return images, f"{name}:{cfg.infer.reference}"


def evaluate(run_dir: str | Path, overrides: list[str] | tuple = ()) -> list[dict]:
    """Evaluate the missing settings of a run; returns the rows written by this call. The run's lock is
    held throughout (by rank 0), so two evaluations never write one run folder at once."""
    run = RunDir(run_dir)
    if not run.config.exists():
        raise FileNotFoundError(f"{run.path} is not a run folder (no {run.config.name}): train the run first, "
                                "then pass its folder runs/<run_id>")
    cfg = load_config(run.config, overrides)
    if run_id(cfg) != run.name:
        raise ConfigError("evaluate overrides may only change infer.* and trainer.* settings, "
                          f"not what was trained (run id {run_id(cfg)} != {run.name})")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    with run.lock("evaluated") if _get_rank() in (None, 0) else nullcontext():
        return _evaluate(run, cfg)


@dataclasses.dataclass
class _Evaluation:
    """What the settings of one evaluation share: the run, its model and decoder, the feature extractor, and the
    reference (``real``: features ``[M, D]`` or ``(mu, sigma)``; ``reference``: its name in the rows)."""

    run: RunDir
    cfg: Config
    fabric: Any
    model: Any
    tokenizer: Any
    extractor: Any
    num_classes: int
    real: Any = None
    reference: str = ""


def _evaluate(run: RunDir, cfg: Config) -> list[dict]:
    fabric = L.Fabric(accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
                      strategy=cfg.trainer.strategy, num_nodes=cfg.trainer.num_nodes)
    fabric.launch()
    model, info, step, used_ema = load_model(run.path, cfg.infer.ckpt, cfg.infer.ema)
    ev = _Evaluation(run, cfg, fabric, model.to(fabric.device), decoder_for(cfg.data),
                     get_extractor(cfg).to(fabric.device), info["num_classes"])
    done = {setting_id(r) for r in run.read_results()}
    grid = settings_grid(cfg, ev.model.num_tokens, step, used_ema, ev.extractor.name)
    todo = [s for s in grid if setting_id(s) not in done]
    if fabric.global_rank == 0:
        print(f"[evaluate] {run.name}: {len(todo)} setting(s) to evaluate, {len(done)} already in {run.results}")
    if not todo:
        return []
    if ev.tokenizer is None:  # a codes folder whose tokenizer weights are not on this machine
        raise FileNotFoundError(f"cannot decode samples: {missing_decoder(cfg.data)}")
    real, ev.reference = reference_for(cfg)
    ev.real = metrics.reference_features(ev.extractor, real, device=fabric.device)  # once, not per setting
    written = [row for i, setting in enumerate(todo, 1) if (row := _evaluate_setting(ev, setting, i, len(todo)))]
    if fabric.global_rank == 0:
        log_to_tensorboard(run, cfg, written)
    return written


def _evaluate_setting(ev: _Evaluation, setting: dict, i: int, total: int) -> dict | None:
    """Sample setting ``i`` of ``total`` on every rank (each its share of the images); on rank 0 measure the
    gathered images, append the result row to the run's results and return it (None on other ranks)."""
    inf, fabric, world, rank = ev.cfg.infer, ev.fabric, ev.fabric.world_size, ev.fabric.global_rank
    if rank == 0:
        ev.run.write_progress("evaluating", i - 1, total)
    if world == 1:
        ev.run.adopt_threads()  # a sweep may have freed cores for this run
    sampler = dataclasses.replace(Sampler.from_row(setting), compile=inf.compile)
    per_rank = -(-inf.num_samples // world)  # ceil: pad so every rank gathers the same shape
    index = torch.arange(rank * per_rank, (rank + 1) * per_rank).clamp_max(inf.num_samples - 1)
    started, times = time.perf_counter(), []
    images = sample_images(ev.model, ev.tokenizer, index, ev.num_classes, sampler, inf.batch_size, fabric.device,
                           times)
    sample_seconds = time.perf_counter() - started
    gathered = fabric.all_gather(images.to(fabric.device))  # (world, per_rank, C, H, W) or per_rank...
    timed_batch, sec = _timing(ev, sampler, times)
    if rank != 0:
        return None
    images = gathered.reshape(-1, *images.shape[1:])[: inf.num_samples].cpu()
    labels = torch.arange(len(images)) % ev.num_classes
    started = time.perf_counter()
    m = metrics.compute_metrics(ev.extractor, images, ev.real, labels, device=fabric.device, seed=setting["seed"],
                                bootstrap=inf.bootstrap)
    metric_seconds = time.perf_counter() - started
    cfg = ev.cfg
    row = result_row(run_id=ev.run.name, data=cfg.data.name, model=cfg.model.name, params=ev.model.num_params(),
                     train_order=cfg.train.order, train_schedule=cfg.train.schedule,
                     train_num_steps=cfg.train.num_steps, train_num_steps_range=cfg.train.num_steps_range,
                     train_seed=cfg.train.seed, **{**setting, "num_samples": len(images)},
                     **{k: m.get(k) for k in METRIC_COLUMNS}, sec_per_image=sec, batch_size=timed_batch,
                     device=str(fabric.device), world_size=world, reference_name=ev.reference, git_sha=git_sha(),
                     sample_seconds=sample_seconds, metric_seconds=metric_seconds,
                     bootstrap_seconds=m.get("bootstrap_seconds"), bootstrap=inf.bootstrap, compiled=inf.compile)
    ev.run.append_result(row)  # row by row: an interruption keeps finished settings
    interval = f" [{row['fd_lo']:.3f}, {row['fd_hi']:.3f}]" if row["fd_lo"] is not None else ""
    print(f"[evaluate] {i}/{total} {setting['infer_order']} K={setting['num_steps']:>3} "
          f"cfg_scale={setting['cfg_scale']} kv_cache={setting['kv_cache']}: "
          f"fd_{ev.extractor.name}={row['fd']:.3f}{interval} sec/img={sec:.5f}")
    return row


def _timing(ev: _Evaluation, sampler: Sampler, times: list[tuple[float, int]]) -> tuple[int, float]:
    """``(batch size, seconds per image)`` of a setting: extra batches of ``infer.timing_batch`` after a warm-up,
    or with ``infer.timing_repeats = 0`` the pass just made, at ``infer.batch_size``."""
    inf = ev.cfg.infer
    if inf.timing_repeats:
        return inf.timing_batch, seconds_per_image(ev.model, ev.num_classes, sampler, inf.timing_batch,
                                                   inf.timing_repeats, ev.fabric.device)
    return inf.batch_size, pass_seconds_per_image(times)


def log_to_tensorboard(run: RunDir, cfg: Config, rows: list[dict]) -> None:
    """Eval scalars into the run's TensorBoard folder at the checkpoint's step (HParams picks them up), and
    FD against the number of steps as a curve (``eval/fd_vs_steps/...``: a scalar whose step is K), so runs
    overlay in TensorBoard as in the FD-vs-steps figure."""
    writer = SummaryWriter(str(run.tb))
    for r in sorted(rows, key=lambda r: r["num_steps"]):
        curve = f"eval/fd_vs_steps/{r['infer_order']}_{r['infer_schedule']}_cfg{r['cfg_scale']}_kv{int(r['kv_cache'])}"
        writer.add_scalar(curve + ("_full" if r["attn"] == "full" else ""), r["fd"], r["num_steps"])
        default = r["infer_order"] == cfg.train.order and r["cfg_scale"] == 1.0
        tag = fd_tag(r["extractor"], r["num_steps"]) if default else \
            f"eval/fd_{r['extractor']}/{r['infer_order']}_cfg_scale{r['cfg_scale']}/steps_{r['num_steps']:03d}"
        writer.add_scalar(tag, r["fd"], r["ckpt_step"])
        writer.add_scalar(f"eval/sec_per_image/kv{int(r['kv_cache'])}/steps_{r['num_steps']:03d}",
                          r["sec_per_image"], r["ckpt_step"])
    writer.close()


"""Evaluate a run: ``python -m sar_lightning.evaluate runs/<run_id> [key=value ...]``.

For every inference setting of the grid (``infer.orders`` x ``infer.num_steps`` x ``infer.cfg_scale``
x ``infer.kv_cache``) it samples ``infer.num_samples`` class-balanced images (image i has label
``i % classes`` and its own seed, so results do not depend on batch size or device count), computes
FD / KID / precision / recall / class accuracy against the real reference split with one feature
extractor, times seconds per image at a fixed batch size after a warm-up, and appends one row to
``runs/<run_id>/results.jsonl`` (atomically). Settings already in the file are skipped.
Under a Lightning strategy (``trainer.devices=2 trainer.strategy=ddp``) images are split across ranks.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

from .config import Config, ConfigError, load_config, run_id
from .files import append_jsonl, read_jsonl
from .intervals import make_intervals
from .orders import make_order
from .sampling import generate

RESULTS = "results.jsonl"
SETTING_KEYS = ("ckpt_step", "ema", "infer_order", "infer_schedule", "num_steps", "cfg", "cfg_schedule",
                "temperature", "top_k", "top_p", "kv_cache", "attn", "num_samples", "reference", "extractor",
                "seed")


def image_dataset(data_cfg) -> str | None:
    """The registered image data set behind the run's data (a codes folder records its source in the
    manifest's ``dataset``), or None for other images (an ImageNet folder)."""
    from .data import read_manifest
    from .datasets import DATASETS

    name = read_manifest(data_cfg.path).get("dataset") if data_cfg.name == "codes" else data_cfg.name
    return name if name in DATASETS else None


def extractor_name(data_cfg) -> str:
    """One feature extractor per data set: its own classifier (``<data>_cnn``), else ``inception``."""
    name = image_dataset(data_cfg)
    return f"{name}_cnn" if name else "inception"


def fd_key(extractor: str, num_steps: int) -> str:
    """Scalar tag of the Frechet distance at one step count, e.g. ``eval/fd_digits_cnn/steps_016``."""
    return f"eval/fd_{extractor}/steps_{num_steps:03d}"


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_run_model(run_dir: Path, ckpt: str = "last", ema: bool = True):
    """The run's model in eval mode, with EMA (``ema=True``, when the run kept one) or raw weights.

    Returns ``(model, info, global_step, used_ema)``.
    """
    from .module import SARLightningModule

    path = run_dir / "checkpoints" / (f"{ckpt}.ckpt" if not ckpt.endswith(".ckpt") else ckpt)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found; train the run first "
                                f"(python -m sar_lightning.train {run_dir / 'config.yaml'})")
    state = torch.load(path, map_location="cpu", weights_only=False)
    module = SARLightningModule(**state["hyper_parameters"])
    has_ema = "current_model_state" in state  # Lightning's EMA callback stores raw weights there
    weights = state["state_dict"] if (ema or not has_ema) else state["current_model_state"]
    module.load_state_dict(weights)
    return module.model.eval(), state["hyper_parameters"]["info"], state["global_step"], ema and has_ema


def infer_intervals(schedule: str, num_tokens: int, num_steps: int) -> list[int]:
    """Inference set sizes; K = N is one token per step whatever the schedule. Random schedules are
    drawn once per setting (a fixed seed) so that every image, on every rank, shares them."""
    if num_steps == num_tokens:
        return make_intervals("ar", num_tokens)
    return make_intervals(schedule, num_tokens, num_steps, generator=torch.Generator().manual_seed(num_steps))


def image_seeds(seed: int, index: torch.Tensor) -> torch.Tensor:
    return index.long() + seed * 1_000_003


@torch.no_grad()
def sample_images(model, tokenizer, index: torch.Tensor, num_classes: int, setting: dict, batch_size: int,
                  device) -> torch.Tensor:
    """Decoded images ``[len(index), C, H, W]`` for image indices ``index``; independent of batching."""
    out = []
    intervals = infer_intervals(setting["infer_schedule"], model.num_tokens, setting["num_steps"])
    for chunk in index.split(batch_size):
        labels, seeds = (chunk % num_classes).to(device), image_seeds(setting["seed"], chunk).to(device)
        order = make_order(setting["infer_order"], model.height, model.width, len(chunk), device=device,
                           seeds=seeds)
        codes = generate(model, labels, order=order, intervals=intervals, cfg_scale=setting["cfg"],
                         cfg_schedule=setting["cfg_schedule"], temperature=setting["temperature"],
                         top_k=setting["top_k"], top_p=setting["top_p"], use_kv_cache=setting["kv_cache"],
                         seeds=seeds, inference_attn=setting["attn"])
        out.append(tokenizer.decode(codes.cpu()).float().clamp(0, 1))
    return torch.cat(out)


def seconds_per_image(model, num_classes: int, setting: dict, batch: int, repeats: int, device) -> float:
    """Median wall time of sampling ``batch`` codes, after one warm-up call, divided by ``batch``."""
    index = torch.arange(batch)
    intervals = infer_intervals(setting["infer_schedule"], model.num_tokens, setting["num_steps"])
    labels, seeds = (index % num_classes).to(device), image_seeds(setting["seed"], index).to(device)
    order = make_order(setting["infer_order"], model.height, model.width, batch, device=device, seeds=seeds)
    kwargs = dict(order=order, intervals=intervals, cfg_scale=setting["cfg"], cfg_schedule=setting["cfg_schedule"],
                  temperature=setting["temperature"], top_k=setting["top_k"], top_p=setting["top_p"],
                  use_kv_cache=setting["kv_cache"], seeds=seeds, inference_attn=setting["attn"])
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        generate(model, labels, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call is the warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


def settings_grid(cfg: Config, kind: str, num_tokens: int, ckpt_step: int, ema: bool, extractor: str) -> list[dict]:
    """Every inference setting the config asks for, as result-row keys (incompatible ones dropped)."""
    inf = cfg.infer
    attn = "full" if cfg.model.decoder_attn == "full" else cfg.infer.attn
    rows = []
    for order, k, w, kv in itertools.product(inf.orders or [cfg.train.order], inf.num_steps, inf.cfg_scale,
                                             inf.kv_cache):
        if kind == "gpt" and (order != "raster" or k != num_tokens or attn != "causal"):
            continue  # the GPT baseline only samples raster next-token
        rows.append(dict(ckpt_step=ckpt_step, ema=ema, infer_order=order, infer_schedule=inf.schedule,
                         num_steps=k, cfg=w, cfg_schedule=inf.cfg_schedule, temperature=inf.temperature,
                         top_k=inf.top_k, top_p=inf.top_p, kv_cache=kv and attn == "causal", attn=attn,
                         num_samples=inf.num_samples, reference=inf.reference, extractor=extractor,
                         seed=inf.seed))
    unique = {tuple(r[k] for k in SETTING_KEYS): r for r in rows}  # kv_cache may collapse under full attn
    return list(unique.values())


def pending_settings(run_dir: str | Path, overrides: list[str] | tuple = ()) -> int | None:
    """How many settings of this evaluation are missing from a finished run's results, without
    loading the model (None when that cannot be told: unfinished run or another checkpoint)."""
    from .data import data_info
    from .model import MODELS

    run_dir = Path(run_dir)
    done = run_dir / "done.json"
    cfg = load_config(run_dir / "config.yaml", overrides)
    if not done.exists() or cfg.infer.ckpt != "last":
        return None
    info = data_info(cfg.data)
    step = json.loads(done.read_text())["global_step"]
    ema = cfg.infer.ema and cfg.train.ema_decay > 0
    kind = MODELS[cfg.model.name].get("kind", "fmt")
    grid = settings_grid(cfg, kind, info["height"] * info["width"], step, ema, extractor_name(cfg.data))
    have = {_setting_id(r) for r in read_jsonl(run_dir / RESULTS)}
    return sum(_setting_id(s) not in have for s in grid)


def _setting_id(row: dict) -> tuple:
    return tuple(row.get(k) for k in SETTING_KEYS)


def missing_decoder(data_cfg) -> str:
    """Why a codes folder's samples cannot be turned into images here (its tokenizer file is missing)."""
    from .data import read_manifest

    tok = read_manifest(data_cfg.path).get("tokenizer", {})
    return (f"the tokenizer of {data_cfg.path} ({tok.get('name')}) is not at {tok.get('path')!r}; put its "
            f"weights there or correct tokenizer.path in {Path(data_cfg.path) / 'manifest.json'}")


def get_extractor(cfg: Config):
    from .features import get_classifier_extractor, get_inception_extractor

    name = image_dataset(cfg.data)
    return get_classifier_extractor(name, seed=0) if name else get_inception_extractor(cfg.infer.inception_weights)


def reference_for(cfg: Config):
    """Real images of the reference split, or ADM-style ``(mu, sigma)`` when a stats file is set."""
    from .datasets import load_images
    from .features import load_reference_stats

    if cfg.infer.reference_stats:
        return load_reference_stats(cfg.infer.reference_stats), Path(cfg.infer.reference_stats).name
    name = image_dataset(cfg.data)
    if name is None:
        raise ConfigError("these codes come from no registered image data set: set infer.reference_stats "
                          "(an .npz with mu and sigma, e.g. ADM's VIRTUAL_imagenet256_labeled.npz)")
    images, _ = load_images(name, cfg.infer.reference, seed=cfg.data.split_seed)
    return images, f"{name}:{cfg.infer.reference}"


def evaluate(run_dir: str | Path, overrides: list[str] | tuple = ()) -> list[dict]:
    """Evaluate the missing settings of a run; returns the rows written by this call."""
    from .data import decoder_for
    from .metrics import compute_metrics

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", overrides)
    if run_id(cfg) != run_dir.name:
        raise ConfigError("evaluate overrides may only change infer.* and trainer.* settings, "
                          f"not what was trained (run id {run_id(cfg)} != {run_dir.name})")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    fabric = L.Fabric(accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
                      strategy=cfg.trainer.strategy, num_nodes=cfg.trainer.num_nodes)
    fabric.launch()
    model, info, step, used_ema = load_run_model(run_dir, cfg.infer.ckpt, cfg.infer.ema)
    model = model.to(fabric.device)
    tokenizer = decoder_for(cfg.data)
    extractor = get_extractor(cfg).to(fabric.device)
    done = {_setting_id(r) for r in read_jsonl(run_dir / RESULTS)}
    grid = settings_grid(cfg, model.kind, model.num_tokens, step, used_ema, extractor.name)
    todo = [s for s in grid if _setting_id(s) not in done]
    if fabric.global_rank == 0:
        print(f"[evaluate] {run_dir.name}: {len(todo)} setting(s) to evaluate, {len(done)} already in {RESULTS}")
    if not todo:
        return []
    if tokenizer is None:  # a codes folder whose tokenizer weights are not on this machine
        raise FileNotFoundError(f"cannot decode samples: {missing_decoder(cfg.data)}")
    real, reference = reference_for(cfg)
    written, world, rank = [], fabric.world_size, fabric.global_rank
    per_rank = -(-cfg.infer.num_samples // world)  # ceil: pad so every rank gathers the same shape
    for setting in todo:
        index = torch.arange(rank * per_rank, (rank + 1) * per_rank).clamp_max(cfg.infer.num_samples - 1)
        images = sample_images(model, tokenizer, index, info["num_classes"], setting, cfg.infer.batch_size,
                               fabric.device)
        gathered = fabric.all_gather(images.to(fabric.device))  # (world, per_rank, C, H, W) or per_rank...
        sec = seconds_per_image(model, info["num_classes"], setting, cfg.infer.timing_batch,
                                cfg.infer.timing_repeats, fabric.device)
        if rank != 0:
            continue
        images = gathered.reshape(-1, *images.shape[1:])[: cfg.infer.num_samples].cpu()
        labels = torch.arange(len(images)) % info["num_classes"]
        m = compute_metrics(extractor, images, real, labels, device=fabric.device, seed=setting["seed"])
        row = dict(run_id=run_dir.name, data=cfg.data.name, model=cfg.model.name, params=model.num_params(),
                   train_order=cfg.train.order, train_schedule=cfg.train.schedule,
                   train_num_sets=cfg.train.num_sets, train_num_sets_range=cfg.train.num_sets_range,
                   **setting, fd=m["fd"], kid=m.get("kid"), kid_std=m.get("kid_std"),
                   precision=m.get("precision"), recall=m.get("recall"), class_acc=m.get("class_acc"),
                   sec_per_image=sec, batch_size=cfg.infer.timing_batch, device=str(fabric.device),
                   world_size=world, reference_name=reference, git_sha=git_sha())
        row["num_samples"] = len(images)
        append_jsonl(run_dir / RESULTS, [row])  # row by row: an interruption keeps finished settings
        written.append(row)
        print(f"[evaluate] {setting['infer_order']} K={setting['num_steps']:>3} cfg={setting['cfg']} "
              f"kv={setting['kv_cache']}: fd_{extractor.name}={m['fd']:.3f} sec/img={sec:.5f}")
    if rank == 0:
        log_to_tensorboard(run_dir, cfg, written)
    return written


def log_to_tensorboard(run_dir: Path, cfg: Config, rows: list[dict]) -> None:
    """Eval scalars into the run's TensorBoard folder at the checkpoint's step (HParams picks them up)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tb"))
    for r in rows:
        default = r["infer_order"] == cfg.train.order and r["cfg"] == 1.0
        tag = fd_key(r["extractor"], r["num_steps"]) if default else \
            f"eval/fd_{r['extractor']}/{r['infer_order']}_cfg{r['cfg']}/steps_{r['num_steps']:03d}"
        writer.add_scalar(tag, r["fd"], r["ckpt_step"])
        writer.add_scalar(f"eval/sec_per_image/kv{int(r['kv_cache'])}/steps_{r['num_steps']:03d}",
                          r["sec_per_image"], r["ckpt_step"])
    writer.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        evaluate(argv[0], argv[1:])
    except (ConfigError, FileNotFoundError) as err:
        print(f"evaluate error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

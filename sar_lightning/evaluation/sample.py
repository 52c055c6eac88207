"""Sample a trained run into one PNG grid: ``python -m sar_lightning sample runs/<run_id> [key=value ...]``.

The sampler is one setting under the run config's ``infer.`` names (``infer.num_steps=4 infer.orders=raster
infer.cfg_scale=2 infer.seed=1 infer.ckpt=last infer.ema=false``; keys left out: see ``SamplerKeys``), the
grid is the ``sample.`` section (``SampleSection``). Plain sampling: one column per class, ``sample.per_class``
rows. ``sample.inpaint=REGION`` keeps a region of real images of the run's reference split and generates the
rest in the model's order: rows are the real image (its codes decoded), the masked input (unknown cells grey),
then the completions. ``sample.progress=true``: one row per class, the canvas after every step (unknown cells
grey). Image i gets its own seed (``sampling.image_seeds``), so the same keys give the same PNG, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from sar_lightning.config import Config, load_config
from sar_lightning.core.intervals import SCHEDULES
from sar_lightning.core.orders import parse_order_name
from sar_lightning.core.sampling import Sampler, generate, inference_attn, inference_intervals
from sar_lightning.data.codes import decoder_for, load_token_split, missing_decoder
from sar_lightning.images import image_grid, save_png
from sar_lightning.runs import RunDir
from sar_lightning.training.checkpoints import load_model

REGIONS = ("top", "bottom", "left", "right", "center")
GREY = 0.5  # the value of cells not generated yet
CFG_SCHEDULES = ("constant", "linear")  # as config.check_config accepts for infer.cfg_schedule


class SampleError(ValueError):
    """A request that cannot run; the message names the problem and what to do."""


@dataclass
class SamplerKeys:
    """The sampler, under the run config's ``infer.`` names: one setting (a list key takes one value)."""

    orders: list[str] = field(default_factory=list)  # the generation order (default: the run's training order)
    schedule: str | None = None  # set sizes (default: the run's infer.schedule)
    num_steps: list[int] = field(default_factory=list)  # K, the sampling steps (default: one token per step)
    cfg_scale: list[float] = field(default_factory=lambda: [1.0])  # classifier-free guidance scale (1: none)
    cfg_schedule: str | None = None  # constant | linear (default: the run's infer.cfg_schedule)
    temperature: float | None = None  # default: the run's infer.temperature
    top_k: int | None = None  # default: the run's infer.top_k
    top_p: float | None = None  # default: the run's infer.top_p
    seed: int = 0  # image i samples with its own seed drawn from this one
    ckpt: str = "last"  # last, stepNNNNNN or a file name under checkpoints/
    ema: bool = True  # the EMA weights (false: the raw ones)


@dataclass
class SampleSection:
    """The grid."""

    classes: list[int] | None = None  # class ids, one column each (default: 0..min(10, classes)-1)
    per_class: int = 4  # images (rows) per class
    out: str | None = None  # PNG path (default: <run>/samples/sample_<order>_K<k>...png)
    inpaint: str | None = None  # keep this region of real images: top | bottom | left | right | center
    progress: bool = False  # the canvas after every step, one row per class


@dataclass
class SampleArgs:
    """``python -m sar_lightning sample RUN`` keys."""

    infer: SamplerKeys = field(default_factory=SamplerKeys)
    sample: SampleSection = field(default_factory=SampleSection)


def one_value(key: str, values: list, default=None):
    """The one value of the list key ``infer.<key>`` (``default`` when empty); ``SampleError`` for several."""
    if len(values) > 1:
        raise SampleError(f"infer.{key}={list(values)}: sample draws one setting; give one value, e.g. "
                          f"infer.{key}={values[0]} (evaluate samples several)")
    return values[0] if values else default


def region_mask(region: str, height: int, width: int) -> torch.Tensor:
    """Known cells ``BoolTensor[N]`` (raster layout) of a region of the grid that inpainting keeps."""
    rows = torch.arange(height)[:, None].expand(height, width)
    cols = torch.arange(width)[None, :].expand(height, width)
    middle = (rows >= height // 4) & (rows < height - height // 4) & (cols >= width // 4) & (cols < width - width // 4)
    masks = {"top": rows < height // 2, "bottom": rows >= height - height // 2, "left": cols < width // 2,
             "right": cols >= width - width // 2, "center": middle}
    return masks[region].flatten()


def paint_unknown(images: torch.Tensor, filled: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``images [B, C, H, W]`` with the pixels of unfilled cells (``filled [B, N]``) set to grey;
    a cell covers an ``H/h x W/w`` block (one pixel for the pixel tokenizer, a patch for a VQ one)."""
    cells = filled.view(-1, 1, *grid).float()
    mask = F.interpolate(cells, size=images.shape[-2:], mode="nearest") > 0.5  # (B, 1, H, W)
    return torch.where(mask, images, torch.full_like(images, GREY))


def decode(tokenizer, codes: torch.Tensor, filled: torch.Tensor | None = None) -> torch.Tensor:
    """``codes [B, N]`` -> images ``[B, C, H, W]`` in [0, 1] (CPU); with ``filled [B, N]`` a partial
    canvas: unfilled cells decoded as code 0, then painted grey."""
    device = next(tokenizer.parameters(), torch.empty(0)).device
    if filled is not None:
        codes = torch.where(filled, codes, 0)
    images = tokenizer.decode(codes.to(device)).float().clamp(0, 1).cpu()
    return images if filled is None else paint_unknown(images, filled.cpu(), tokenizer.grid)


def sample_codes(model, sampler: Sampler, labels, index, device, prefill=None, on_step=None) -> torch.Tensor:
    """Codes ``[B, N]`` of images ``index [B]`` with class ``labels [B]``; with ``prefill = (codes [B, N],
    known [B, N])`` the K = ``sampler.num_steps`` steps cover the unknown cells only."""
    _, kwargs = sampler.request(model, index, 1, device)  # order, intervals, per-image seeds
    if prefill is not None:
        kwargs["intervals"] = inference_intervals(sampler.schedule, int((~prefill[1][0]).sum()), sampler.num_steps)
        prefill = tuple(t.to(device) for t in prefill)
    return generate(model, labels.to(device), **kwargs, prefill=prefill, on_step=on_step).cpu()


def sample_images(model, tokenizer, sampler: Sampler, classes: list[int], per_class: int, device) -> torch.Tensor:
    """Images ``[per_class * len(classes), C, H, W]``; image i has class ``classes[i % len(classes)]``."""
    index = torch.arange(per_class * len(classes))
    labels = torch.tensor(classes)[index % len(classes)]
    return decode(tokenizer, sample_codes(model, sampler, labels, index, device))


def inpaint_images(model, tokenizer, sampler: Sampler, real, labels, known, per_class: int, device):
    """Rows of ``real [n, N]`` (labels ``[n]``) images: the real ones, the masked inputs (``known [N]``
    kept), then ``per_class`` completions -> ``[(2 + per_class) * n, C, H, W]``."""
    n = len(real)
    index = torch.arange(per_class * n)
    prefill = (real[index % n], known.expand(len(index), -1))
    codes = sample_codes(model, sampler, labels[index % n], index, device, prefill=prefill)
    masked = decode(tokenizer, real, known.expand(n, -1))
    return torch.cat([decode(tokenizer, real), masked, decode(tokenizer, codes)])


def progress_images(model, tokenizer, sampler: Sampler, labels, device, prefill=None):
    """The canvas of images ``0..B-1`` (class ``labels [B]``) after each step: ``([B, K, C, H, W],
    filled [B, K, N])``; the last step is the finished sample."""
    steps = []
    on_step = lambda tokens, filled: steps.append((tokens.clone().cpu(), filled.cpu()))
    sample_codes(model, sampler, labels, torch.arange(len(labels)), device, prefill=prefill, on_step=on_step)
    codes, filled = torch.stack([t for t, _ in steps], 1), torch.stack([f for _, f in steps], 1)  # (B, K, N)
    images = decode(tokenizer, codes.flatten(0, 1), filled.flatten(0, 1))
    return images.view(*codes.shape[:2], *images.shape[1:]), filled


def parse_classes(classes: list[int] | None, num_classes: int) -> list[int]:
    """``sample.classes`` checked against the model's classes (default: the first ten)."""
    if classes is None:
        return list(range(min(10, num_classes)))
    if not classes or any(not 0 <= c < num_classes for c in classes):
        raise SampleError(f"sample.classes={list(classes)}: give class ids in 0..{num_classes - 1}, "
                          "e.g. sample.classes=[0,3,7]")
    return list(classes)


def reference_codes(cfg: Config, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``[n, N]`` and labels ``[n]`` of the first image of each class in the reference split,
    tokenized the way training tokens are (``data.load_token_split``)."""
    data = load_token_split(cfg.data, cfg.infer.reference)
    labels = data.tensors[1] if isinstance(data, TensorDataset) else torch.tensor(data.labels[:])
    picks = []
    for c in classes:
        found = (labels == c).nonzero()
        if not len(found):
            raise SampleError(f"class {c} has no image in the {cfg.infer.reference!r} split; pick other sample.classes")
        picks.append(int(found[0]))
    return torch.stack([data[i][0] for i in picks]), torch.tensor(classes)


def load_run(path: str | Path, keys: SamplerKeys) -> tuple:
    """The run's config, model, tokenizer, checkpoint step and whether EMA weights were used."""
    run = RunDir(path)
    if not run.config.exists():
        raise SampleError(f"no run folder at {run.path} (no config.yaml): pass runs/<run_id> of a trained run")
    if not run.checkpoint(keys.ckpt).exists():
        have = sorted(p.stem for p in run.checkpoints.glob("*.ckpt"))
        raise SampleError(f"no checkpoint {run.checkpoint(keys.ckpt)}; available: {have or 'none (train first)'}")
    cfg = load_config(run.config)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    tokenizer = decoder_for(cfg.data)
    if tokenizer is None:
        raise SampleError(f"cannot decode samples: {missing_decoder(cfg.data)}")
    model, _, step, used_ema = load_model(run.path, keys.ckpt, keys.ema)
    return run, cfg, model, tokenizer, step, used_ema


def make_sampler(keys: SamplerKeys, cfg: Config, model, known: torch.Tensor | None) -> Sampler:
    """The sampler setting of the ``infer.`` keys (the run's config for those left out), checked against the
    model (``SampleError`` otherwise)."""
    order = one_value("orders", keys.orders, cfg.train.order)
    try:
        parse_order_name(order)
    except ValueError as err:
        raise SampleError(f"infer.orders: {err}") from None
    n_known = int(known.sum()) if known is not None else 0
    free = model.num_tokens - n_known
    k = one_value("num_steps", keys.num_steps, free)
    if not 1 <= k <= free:
        raise SampleError(f"infer.num_steps={k} must lie in 1..{free} (the {'unknown cells' if n_known else 'tokens'})")
    cfg_scale = one_value("cfg_scale", keys.cfg_scale, 1.0)
    inf = cfg.infer
    schedule, cfg_schedule = keys.schedule or inf.schedule, keys.cfg_schedule or inf.cfg_schedule
    for key, value, valid in [("schedule", schedule, sorted(SCHEDULES)), ("cfg_schedule", cfg_schedule, CFG_SCHEDULES)]:
        if value not in valid:
            raise SampleError(f"infer.{key}={value!r} is not valid; choose one of: {', '.join(valid)}")
    temperature = inf.temperature if keys.temperature is None else keys.temperature
    top_k = inf.top_k if keys.top_k is None else keys.top_k
    top_p = inf.top_p if keys.top_p is None else keys.top_p
    attn = inference_attn(model.decoder_attn, inf.attn)  # as evaluate samples
    sampler = Sampler(order, schedule, k, cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, temperature=temperature,
                      top_k=top_k, top_p=top_p, attn=attn, seed=keys.seed, compile=inf.compile)
    try:
        sizes = inference_intervals(sampler.schedule, free, k)
    except ValueError as err:
        raise SampleError(f"infer.schedule={sampler.schedule} at infer.num_steps={k}: {err}") from None
    reason = model.refusal(order, [n_known, *sizes] if n_known else sizes, attn, model.decoder_attn)
    if reason:
        raise SampleError(f"this model refuses order={order} K={k}{' with inpainting' * bool(n_known)}: {reason}")
    return sampler


def build_grid(args: SampleSection, cfg, model, tokenizer, sampler, known, classes, device) -> torch.Tensor:
    """The grid image ``[C, H', W']`` the ``sample.`` keys ask for."""
    if not args.inpaint:
        if args.progress:  # one row per class: its first image, step by step
            steps, _ = progress_images(model, tokenizer, sampler, torch.tensor(classes), device)
            return image_grid(steps.flatten(0, 1), nrow=steps.shape[1])
        return image_grid(sample_images(model, tokenizer, sampler, classes, args.per_class, device), nrow=len(classes))
    real, labels = reference_codes(cfg, classes)
    if not args.progress:
        return image_grid(inpaint_images(model, tokenizer, sampler, real, labels, known, args.per_class, device),
                          nrow=len(classes))
    prefill = (real, known.expand(len(real), -1))
    steps, _ = progress_images(model, tokenizer, sampler, labels, device, prefill=prefill)
    rows = torch.cat([decode(tokenizer, real)[:, None], decode(tokenizer, *prefill)[:, None], steps], 1)
    return image_grid(rows.flatten(0, 1), nrow=rows.shape[1])  # per class: real, masked, each step


def sample(path: str | Path, keys: SampleArgs) -> Path:
    """Write the PNG grid of the run folder ``path`` that ``keys`` ask for; return its path."""
    args = keys.sample
    if args.per_class < 1:
        raise SampleError(f"sample.per_class must be >= 1, got {args.per_class}")
    if args.inpaint is not None and args.inpaint not in REGIONS:
        raise SampleError(f"sample.inpaint={args.inpaint!r} is not a region; choose one of: {', '.join(REGIONS)}")
    run, cfg, model, tokenizer, step, used_ema = load_run(path, keys.infer)
    classes = parse_classes(args.classes, model.config.num_classes)
    known = region_mask(args.inpaint, model.height, model.width) if args.inpaint else None
    sampler = make_sampler(keys.infer, cfg, model, known)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = model.to(device), tokenizer.to(device)
    grid = build_grid(args, cfg, model, tokenizer, sampler, known, classes, device)
    tags = f"{'_inpaint' if args.inpaint else ''}{'_progress' if args.progress else ''}"
    name = f"sample_{sampler.order.replace(':', '')}_K{sampler.num_steps}{tags}.png"
    out = Path(args.out) if args.out else run.samples / name
    save_png(grid, out)
    what = f"inpaint {args.inpaint}, " if args.inpaint else ""
    print(f"[sample] {run.name} step {step} ({'ema' if used_ema else 'raw'}): {what}order {sampler.order}, "
          f"K={sampler.num_steps} ({sampler.schedule}), cfg {sampler.cfg_scale}, classes {classes}, "
          f"seed {keys.infer.seed}{', progress' if args.progress else f', {args.per_class} per class'}")
    print(out)
    return out

"""Sample a trained run into one PNG grid: ``python -m sar_lightning.evaluation.sample runs/<run_id> [options]``.

Plain sampling: one column per class, ``--per-class`` rows. ``--inpaint [REGION]`` keeps a region of
real images of the run's reference split and generates the rest in the model's order: rows are the
real image (its codes decoded), the masked input (unknown cells grey), then the completions.
``--progress``: one row per class, the canvas after every step (unknown cells grey). Image i gets its
own seed (``sampling.image_seeds``), so the same arguments give the same PNG, bit for bit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from sar_lightning.config import Config, ConfigError, load_config
from sar_lightning.core.intervals import SCHEDULES
from sar_lightning.core.orders import parse_order_name
from sar_lightning.core.sampling import Sampler, generate, inference_intervals
from sar_lightning.data.codes import decoder_for, load_token_split, missing_decoder
from sar_lightning.files import FileError, atomic_write
from sar_lightning.images import image_grid, save_png
from sar_lightning.runs import RunDir
from sar_lightning.training.checkpoints import load_model

REGIONS = ("top", "bottom", "left", "right", "center")
GREY = 0.5  # the value of cells not generated yet


class SampleError(ValueError):
    """A request that cannot run; the message names the problem and what to do."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr (main), not usage + message
        raise SampleError(f"{message} (see --help)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog="python -m sar_lightning.evaluation.sample", description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder, runs/<run_id>")
    p.add_argument("--steps", type=int, help="K, the number of sampling steps (default: one token per step)")
    p.add_argument("--order", help="generation order (default: the run's training order)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), help="set sizes (default: the run's infer.schedule)")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--classes", help="comma-separated class ids (default: 0..min(10, classes)-1)")
    p.add_argument("--per-class", type=int, default=4, help="images (rows) per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt", default="last", help="last, stepNNNNNN or a file name under checkpoints/")
    p.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA ones")
    p.add_argument("--out", type=Path, help="PNG path (default: <run>/samples/sample_<order>_K<k>...png)")
    p.add_argument("--inpaint", nargs="?", const="top", choices=REGIONS, help="keep REGION of real images")
    p.add_argument("--progress", action="store_true", help="the canvas after every step, one row per class")
    return p.parse_args(argv)


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


def parse_classes(text: str | None, num_classes: int) -> list[int]:
    if text is None:
        return list(range(min(10, num_classes)))
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        classes = []
    if not classes or any(not 0 <= c < num_classes for c in classes):
        raise SampleError(f"--classes {text!r}: give comma-separated class ids in 0..{num_classes - 1}, e.g. 0,3,7")
    return classes


def reference_codes(cfg: Config, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``[n, N]`` and labels ``[n]`` of the first image of each class in the reference split,
    tokenized the way training tokens are (``data.load_token_split``)."""
    data = load_token_split(cfg.data, cfg.infer.reference)
    labels = data.tensors[1] if isinstance(data, TensorDataset) else torch.tensor(data.labels[:])
    picks = []
    for c in classes:
        found = (labels == c).nonzero()
        if not len(found):
            raise SampleError(f"class {c} has no image in the {cfg.infer.reference!r} split; pick other --classes")
        picks.append(int(found[0]))
    return torch.stack([data[i][0] for i in picks]), torch.tensor(classes)


def load_run(args) -> tuple:
    """The run's config, model, tokenizer, checkpoint step and whether EMA weights were used."""
    run = RunDir(args.run)
    if not run.config.exists():
        raise SampleError(f"no run folder at {run.path} (no config.yaml): pass runs/<run_id> of a trained run")
    if not run.checkpoint(args.ckpt).exists():
        have = sorted(p.stem for p in run.checkpoints.glob("*.ckpt"))
        raise SampleError(f"no checkpoint {run.checkpoint(args.ckpt)}; available: {have or 'none (train first)'}")
    cfg = load_config(run.config)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    tokenizer = decoder_for(cfg.data)
    if tokenizer is None:
        raise SampleError(f"cannot decode samples: {missing_decoder(cfg.data)}")
    model, _, step, used_ema = load_model(run.path, args.ckpt, not args.no_ema)
    return run, cfg, model, tokenizer, step, used_ema


def make_sampler(args, cfg: Config, model, known: torch.Tensor | None) -> Sampler:
    """The sampler setting of the arguments, checked against the model (``SampleError`` otherwise)."""
    order = args.order or cfg.train.order
    try:
        parse_order_name(order)
    except ValueError as err:
        raise SampleError(f"--order: {err}") from None
    n_known = int(known.sum()) if known is not None else 0
    free = model.num_tokens - n_known
    k = free if args.steps is None else args.steps
    if not 1 <= k <= free:
        raise SampleError(f"--steps {k} must lie in 1..{free} (the {'unknown cells' if n_known else 'tokens'})")
    inf = cfg.infer
    attn = "full" if model.decoder_attn == "full" else inf.attn  # as evaluate samples
    sampler = Sampler(order, args.schedule or inf.schedule, k, cfg_scale=args.cfg, cfg_schedule=inf.cfg_schedule,
                      temperature=inf.temperature, top_k=inf.top_k, top_p=inf.top_p, attn=attn, seed=args.seed,
                      compile=inf.compile)
    try:
        sizes = inference_intervals(sampler.schedule, free, k)
    except ValueError as err:
        raise SampleError(f"--schedule {sampler.schedule} at --steps {k}: {err}") from None
    reason = model.refusal(order, [n_known, *sizes] if n_known else sizes, attn, model.decoder_attn)
    if reason:
        raise SampleError(f"this model refuses order={order} K={k}{' with inpainting' * bool(n_known)}: {reason}")
    return sampler


def build_grid(args, cfg, model, tokenizer, sampler, known, classes, device) -> torch.Tensor:
    """The grid image ``[C, H', W']`` the arguments ask for."""
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


def sample(argv: list[str]) -> Path:
    """Write the PNG the command line asks for; return its path."""
    args = parse_args(argv)
    if args.per_class < 1:
        raise SampleError(f"--per-class must be >= 1, got {args.per_class}")
    run, cfg, model, tokenizer, step, used_ema = load_run(args)
    classes = parse_classes(args.classes, model.config.num_classes)
    known = region_mask(args.inpaint, model.height, model.width) if args.inpaint else None
    sampler = make_sampler(args, cfg, model, known)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = model.to(device), tokenizer.to(device)
    grid = build_grid(args, cfg, model, tokenizer, sampler, known, classes, device)
    tags = f"{'_inpaint' if args.inpaint else ''}{'_progress' if args.progress else ''}"
    out = args.out or run.samples / f"sample_{sampler.order.replace(':', '')}_K{sampler.num_steps}{tags}.png"
    save_png(grid, out)
    what = f"inpaint {args.inpaint}, " if args.inpaint else ""
    print(f"[sample] {run.name} step {step} ({'ema' if used_ema else 'raw'}): {what}order {sampler.order}, "
          f"K={sampler.num_steps} ({sampler.schedule}), cfg {args.cfg}, classes {classes}, seed {args.seed}"
          f"{', progress' if args.progress else f', {args.per_class} per class'}")
    print(out)
    return out


def stack_figures(paths: list[str | Path], labels: list[str], out: str | Path) -> Path:
    """Stack PNGs vertically into one figure, each under a text label (README figures)."""
    from PIL import Image, ImageDraw

    images = [Image.open(p).convert("RGB") for p in paths]
    band, width = 18, max(im.width for im in images)
    figure = Image.new("RGB", (width, sum(im.height + band for im in images)), "white")
    y = 0
    for image, label in zip(images, labels):
        ImageDraw.Draw(figure).text((4, y + 3), label, fill="black")
        figure.paste(image, (0, y + band))
        y += image.height + band
    atomic_write(out, lambda tmp: figure.save(tmp, format="png"))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    try:
        sample(sys.argv[1:] if argv is None else argv)
    except (SampleError, ConfigError, FileNotFoundError, FileError) as err:
        print(f"sample error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

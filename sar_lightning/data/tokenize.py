"""Extract a codes data set: ``python -m sar_lightning tokenize data=D tokenizer=T out=FOLDER [key=value ...]``.

``data``: a registered data set (``digits``, ``fashion_mnist``) or an image folder in torchvision's
``ImageFolder`` layout, either ``root/train/<class>/*`` + ``root/val/<class>/*`` or one split
``root/<class>/*`` (a seeded ``val_fraction`` of it is held out as ``val``). Folder images are
resized and centre-cropped to the tokenizer's image size, in grayscale for a 1-channel tokenizer.
``tokenizer``: ``pixel`` (``levels``), ``vqvae:<vqvae.pt>`` or ``llamagen:<vq_ds16_c2i.pt>``.

Work goes to ``<out>.partial/`` as atomically written chunk files, so an interrupted extraction
continues from its finished chunks when re-run; the final folder is written in one piece by
``write_codes`` and the chunks are removed. A re-run whose output exists and matches is skipped.

Examples::

    python -m sar_lightning tokenize data=digits tokenizer=pixel out=data/digits_pixel
    python -m sar_lightning tokenize data=fashion_mnist \\
        tokenizer=vqvae:data/tokenizers/fashion_mnist_vq7/vqvae.pt out=data/fashion_mnist_vq7
    python -m sar_lightning tokenize data=/datasets/imagenet \\
        tokenizer=llamagen:pretrained_models/vq_ds16_c2i.pt \\
        out=data/imagenet_vq16 flip=true batch_size=128 workers=8
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import MISSING
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import datasets, transforms
from torchvision.transforms.functional import center_crop, resize
from tqdm import tqdm

from sar_lightning.data.codes import read_manifest, write_codes
from sar_lightning.data.datasets import DATASETS, dataset_info, load_images
from sar_lightning.data.tokenizers import PixelQuantizer, load_llamagen_vq16, load_vqvae
from sar_lightning.files import atomic_write, atomic_write_text

CHUNK_SIZE = 4096  # images per chunk file: the unit of resumption


@dataclass
class Part:
    """A run of chunks: one split, or the flipped copy of the train split."""

    name: str  # chunk file prefix: train, train-flip, val
    split: str
    dataset: Dataset  # items (image [C, H, W] in [0, 1], label)
    flip: bool = False


def file_digest(path: str | Path) -> str:
    """First 10 hex digits of the file's sha1: ties a codes folder to the exact tokenizer weights."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:10]


def parse_tokenizer(spec: str, levels: int, image_size: tuple[int, int] | None):
    """``pixel`` | ``vqvae:<path>`` | ``llamagen:<path>`` -> ``(tokenizer, manifest entry, description)``."""
    kind, _, path = spec.partition(":")
    if kind == "pixel":
        if image_size is None:
            raise ValueError("the pixel tokenizer on an image folder needs image_size=<pixels>")
        tok = PixelQuantizer(levels, *image_size)
        return tok, {"name": "pixel", "levels": levels, "channels": 1}, f"pixel ({levels} levels)"
    if kind not in ("vqvae", "llamagen") or not path:
        raise ValueError(f"tokenizer={spec!r}: use pixel, vqvae:<path> or llamagen:<path>")
    path = Path(path).resolve()  # manifests are read from other working directories (sweeps, tests)
    if kind == "vqvae":
        tok, name = load_vqvae(path), "vqvae"
    else:
        tok, name = load_llamagen_vq16(path), "llamagen_vq16"
    if path.is_dir():  # load_vqvae accepts the folder holding vqvae.pt
        path = path / "vqvae.pt"
    return tok, {"name": name, "path": str(path)}, f"{name}:{path} (sha1 {file_digest(path)})"


def _has_splits(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "val").is_dir()


def _folder_dataset(root: Path, split: str | None, channels: int, size: tuple[int, int]):
    steps = [transforms.Resize(max(size)), transforms.CenterCrop(size)]  # shorter side, then the centre
    steps += [transforms.Grayscale(1)] if channels == 1 else []
    transform = transforms.Compose([*steps, transforms.ToTensor()])  # -> [C, H, W] in [0, 1]
    return datasets.ImageFolder(str(root / split if split else root), transform)


def build_parts(data: str, tok, flip: bool, limit: int | None, val_fraction: float, seed: int = 0):
    """The chunk runs to encode and the data set's class count."""
    size = tuple(tok.image_size)
    if data in DATASETS:
        splits = {}
        for split in ("train", "val"):
            images, labels = load_images(data, split, seed=seed)
            splits[split] = TensorDataset(images, labels)  # fitted to the tokenizer batch by batch
        num_classes = dataset_info(data)["num_classes"]
    elif _has_splits(Path(data)):
        splits = {s: _folder_dataset(Path(data), s, tok.channels, size) for s in ("train", "val")}
        if splits["train"].classes != splits["val"].classes:
            raise ValueError(f"{data}: train and val have different class folders")
        num_classes = len(splits["train"].classes)
    else:  # one split: hold out a seeded fraction as val
        full = _folder_dataset(Path(data), None, tok.channels, size)
        perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, round(val_fraction * len(full)))
        splits = {"train": Subset(full, perm[n_val:].sort().values.tolist()),
                  "val": Subset(full, perm[:n_val].sort().values.tolist())}
        num_classes = len(full.classes)
    if limit is not None:  # the first `limit` images of each split (tests, quick looks)
        splits = {s: Subset(d, range(min(limit, len(d)))) for s, d in splits.items()}
    parts = [Part("train", "train", splits["train"])]
    parts += [Part("train-flip", "train", splits["train"], flip=True)] if flip else []
    return [*parts, Part("val", "val", splits["val"])], num_classes


def fit_images(images: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """``images [B, C, H, W]`` -> ``[B, channels, *size]``: grayscale <-> RGB, resize + centre crop."""
    if images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] == 3 and channels == 1:
        images = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if tuple(images.shape[-2:]) != size:
        images = center_crop(resize(images, max(size), antialias=True), list(size)).clamp(0, 1)
    return images.contiguous()


@torch.no_grad()
def encode_chunk(tok, part: Part, start: int, stop: int, batch_size: int, workers: int, device) -> tuple:
    """Codes ``int32 [stop - start, N]`` and labels ``int64 [stop - start]`` of one chunk of a part."""
    codes, labels = [], []
    loader = DataLoader(Subset(part.dataset, range(start, stop)), batch_size=batch_size, num_workers=workers)
    for images, y in loader:
        images = fit_images(images, tok.channels, tuple(tok.image_size))
        images = images.flip(-1) if part.flip else images  # a horizontal mirror
        codes.append(tok.encode(images.to(device)).cpu().to(torch.int32))
        labels.append(torch.as_tensor(y, dtype=torch.int64))
    return torch.cat(codes).numpy(), torch.cat(labels).numpy()


def _save_chunk(path: Path, codes: np.ndarray, labels: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, codes=codes, labels=labels)
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))  # a chunk file exists only complete


def _prepare_partial(partial: Path, job: dict) -> None:
    """Keep the chunks of the same job; start afresh (and say so) when the job changed."""
    job_file = partial / "job.json"
    if partial.exists() and (not job_file.exists() or json.loads(job_file.read_text()) != job):
        print(f"[tokenize] {partial} holds chunks of another extraction; starting afresh")
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    if not job_file.exists():
        atomic_write_text(job_file, json.dumps(job, indent=1))


def _codes_source(data: str, native: bool, size: tuple[int, int], tok_desc: str, val_fraction: float, flip: bool,
                  limit: int | None) -> str:
    """The manifest's ``source``: every choice that changes the codes, so a re-run matches it or does not."""
    source = f"{data if native else Path(data).resolve()} at {size[0]}x{size[1]} via {tok_desc}"
    source += "" if native or _has_splits(Path(data)) else f", val = a seeded {val_fraction:g} of the images"
    return source + (" + horizontal flips of train" if flip else "") + (f", first {limit} per split" if limit else "")


def _holds_these_codes(out: Path, source: str, tok_entry: dict, overwrite: bool) -> bool:
    """Whether ``out`` already holds these codes (then its leftover chunks go); other codes there raise
    FileExistsError unless ``overwrite``."""
    if not (out / "manifest.json").exists():
        return False
    have = read_manifest(out)
    if have.get("source") == source and have.get("tokenizer") == tok_entry:
        print(f"[tokenize] {out} already holds these codes ({have['splits']}); skipping")
        shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
        return True
    if not overwrite:
        raise FileExistsError(f"{out} holds other codes (source {have.get('source')!r}); "
                              "pass overwrite=true to replace them")
    return False


def _encode_parts(tok, parts: list[Part], partial: Path, chunk_size: int, batch_size: int, workers: int, device,
                  name: str, progress: bool) -> dict:
    """Encode every chunk not yet in ``partial`` (one file each), then ``{split: (codes [M, N], labels [M])}``."""
    jobs = [(p, c, min(c + chunk_size, len(p.dataset))) for p in parts for c in range(0, len(p.dataset), chunk_size)]

    def file(p: Part, start: int) -> Path:
        return partial / f"{p.name}_{start // chunk_size:05d}.npz"

    done = sum(stop - start for p, start, stop in jobs if file(p, start).exists())
    total = sum(len(p.dataset) for p in parts)
    if done:
        print(f"[tokenize] resuming from {partial}: {done} of {total} images already encoded")
    with tqdm(total=total, initial=done, unit="img", desc=f"tokenize {name}", disable=not progress) as bar:
        for p, start, stop in jobs:
            if not file(p, start).exists():
                _save_chunk(file(p, start), *encode_chunk(tok, p, start, stop, batch_size, workers, device))
                bar.update(stop - start)
    splits = {}
    for split in ("train", "val"):
        chunks = [np.load(file(p, start)) for p, start, _ in jobs if p.split == split]
        splits[split] = (np.concatenate([c["codes"] for c in chunks]), np.concatenate([c["labels"] for c in chunks]))
    return splits


def tokenize(data: str, tokenizer: str, out: str | Path, *, image_size: int | None = None, flip: bool = False,
             batch_size: int = 256, levels: int = 17, limit: int | None = None, chunk_size: int = CHUNK_SIZE,
             val_fraction: float = 0.1, workers: int = 0, device: str | None = None, overwrite: bool = False,
             progress: bool = True) -> Path:
    """Encode ``data`` with ``tokenizer`` into the codes folder ``out`` (see the module docstring)."""
    out = Path(out)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    native = DATASETS.get(data)
    if not native and not Path(data).is_dir():
        raise FileNotFoundError(f"data={data!r} is neither a registered data set ({sorted(DATASETS)}) "
                                "nor an image folder")
    size = (image_size, image_size) if image_size else (native.height, native.width) if native else None
    tok, tok_entry, tok_desc = parse_tokenizer(tokenizer, levels, size)
    if size is not None and tuple(tok.image_size) != size:
        raise ValueError(f"image_size={size} does not match the tokenizer's image size {tuple(tok.image_size)}")
    size = tuple(tok.image_size)
    # The registered data set only when decoded images have its own shape: evaluation then compares
    # samples with its real images through its classifier; otherwise it needs reference statistics.
    dataset = data if native and (native.height, native.width) == size and native.channels == tok.channels else None
    source = _codes_source(data, bool(native), size, tok_desc, val_fraction, flip, limit)
    if _holds_these_codes(out, source, tok_entry, overwrite):
        return out
    parts, num_classes = build_parts(data, tok, flip, limit, val_fraction)
    partial = out.with_name(out.name + ".partial")
    _prepare_partial(partial, {"source": source, "tokenizer": tok_entry, "chunk_size": chunk_size})
    tok = tok.to(device).eval()
    splits = _encode_parts(tok, parts, partial, chunk_size, batch_size, workers, device, out.name, progress)
    write_codes(out, splits, height=tok.grid[0], width=tok.grid[1], vocab_size=tok.vocab_size,
                num_classes=num_classes, tokenizer=tok_entry, source=source, dataset=dataset)
    shutil.rmtree(partial)
    print(f"[tokenize] wrote {out}: " + ", ".join(f"{s} {len(v[1])}" for s, v in splits.items())
          + f" images of {tok.grid[0]}x{tok.grid[1]} codes (vocabulary {tok.vocab_size}, {num_classes} classes)")
    return out


@dataclass
class TokenizeArgs:
    """``python -m sar_lightning tokenize`` keys."""

    data: str = MISSING  # digits | fashion_mnist | an image folder
    tokenizer: str = MISSING  # pixel | vqvae:<path> | llamagen:<path>
    out: str = MISSING  # the codes folder to write
    image_size: int | None = None  # resize + centre crop to this size
    flip: bool = False  # add horizontally flipped copies of the train split
    batch_size: int = 256
    levels: int = 17  # pixel tokenizer: intensity levels
    limit: int | None = None  # only the first N images of each split
    chunk_size: int = CHUNK_SIZE  # images per resumable chunk file
    val_fraction: float = 0.1  # held out as val from a one-split folder
    workers: int = 0  # image folder: data loader processes
    device: str | None = None  # cpu | cuda (default: cuda when available)
    threads: int = 0  # torch.set_num_threads when > 0
    overwrite: bool = False  # replace an existing folder holding other codes
    no_progress: bool = False  # no progress bar


def tokenize_command(a: TokenizeArgs) -> int:
    """``tokenize`` with the command's keys."""
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    tokenize(a.data, a.tokenizer, a.out, image_size=a.image_size, flip=a.flip, batch_size=a.batch_size,
             levels=a.levels, limit=a.limit, chunk_size=a.chunk_size, val_fraction=a.val_fraction,
             workers=a.workers, device=a.device, overwrite=a.overwrite, progress=not a.no_progress)
    return 0

"""Code extraction (``python -m sar_lightning.data.tokenize``), the VQ-VAE CLI and the Fashion-MNIST data overlay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

import sar_lightning.data.tokenize as tz
from sar_lightning.cli import main as cli
from sar_lightning.config import ConfigError
from sar_lightning.data.codes import load_codes_split, read_manifest, tokenizer_from_manifest
from sar_lightning.data.datasets import load_images
from sar_lightning.data.tokenize import tokenize
from sar_lightning.data.tokenizers import VQVAE, PixelQuantizer, VQVAEConfig, save_vqvae
from sar_lightning.sweeps.sweep import expand

ORDERS = REPO / "experiments" / "grids" / "orders.yaml"
QUIET = dict(progress=False, chunk_size=256)  # digits: 1437 train + 360 val images = 6 + 2 chunks


def _split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    codes, labels = load_codes_split(folder, split).tensors
    return codes.numpy(), labels.numpy()


def test_digits_pixel_codes_equal_the_quantizer_and_a_rerun_skips(tmp_path, capsys):
    out = tokenize("digits", "pixel", tmp_path / "digits_pixel", **QUIET)
    m = read_manifest(out)
    assert (m["height"], m["width"], m["vocab_size"], m["num_classes"]) == (8, 8, 17, 10)
    assert m["dataset"] == "digits" and m["tokenizer"] == {"name": "pixel", "levels": 17, "channels": 1}
    quantizer = PixelQuantizer(17, 8, 8)
    for split in ("train", "val"):
        images, labels = load_images("digits", split)
        codes, got_labels = _split(out, split)
        assert np.array_equal(codes, quantizer.encode(images).numpy()) and np.array_equal(got_labels, labels)
    assert not (tmp_path / "digits_pixel.partial").exists()
    assert isinstance(tokenizer_from_manifest(m), PixelQuantizer)
    stamp = (out / "train_codes.npy").stat().st_mtime_ns
    assert cli(["tokenize", "data=digits", "tokenizer=pixel", f"out={out}", "chunk_size=256", "no_progress=true"]) == 0
    assert "skipping" in capsys.readouterr().out and (out / "train_codes.npy").stat().st_mtime_ns == stamp
    # Other codes at the same place are refused, not overwritten.
    assert cli(["tokenize", "data=digits", "tokenizer=pixel", "levels=5", f"out={out}"]) == 2
    assert "overwrite=true" in capsys.readouterr().err


def test_an_interrupted_extraction_leaves_no_folder_and_resumes(tmp_path, monkeypatch, capsys):
    real, calls = tz.encode_chunk, []

    def counted(*args, crash_after=None):
        calls.append(args[2])  # the chunk's first image index
        if crash_after is not None and len(calls) > crash_after:
            raise RuntimeError("simulated crash")
        return real(*args)

    monkeypatch.setattr(tz, "encode_chunk", lambda *a: counted(*a, crash_after=3))
    out = tmp_path / "digits_pixel"
    with pytest.raises(RuntimeError, match="simulated crash"):
        tokenize("digits", "pixel", out, **QUIET)
    assert not out.exists()  # never a half-written data set
    assert len(list((tmp_path / "digits_pixel.partial").glob("*.npz"))) == 3
    calls.clear()
    monkeypatch.setattr(tz, "encode_chunk", counted)
    tokenize("digits", "pixel", out, **QUIET)
    assert len(calls) == 8 - 3  # only the missing chunks were encoded
    assert "resuming from" in capsys.readouterr().out
    reference = tokenize("digits", "pixel", tmp_path / "uninterrupted", **QUIET)
    for split in ("train", "val"):
        assert all(np.array_equal(a, b) for a, b in zip(_split(out, split), _split(reference, split)))
    assert not (tmp_path / "digits_pixel.partial").exists()


def test_flip_adds_mirrored_training_images(tmp_path):
    plain = tokenize("digits", "pixel", tmp_path / "plain", **QUIET)
    flipped = tokenize("digits", "pixel", tmp_path / "flipped", flip=True, **QUIET)
    (a, la), (b, lb) = _split(plain, "train"), _split(flipped, "train")
    assert len(b) == 2 * len(a) and np.array_equal(b[: len(a)], a) and np.array_equal(lb, np.concatenate([la, la]))
    assert np.array_equal(b[len(a):].reshape(-1, 8, 8), a.reshape(-1, 8, 8)[:, :, ::-1])
    assert np.array_equal(_split(flipped, "val")[0], _split(plain, "val")[0])  # val is never augmented
    assert "flips" in read_manifest(flipped)["source"]


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_is_centre_cropped_in_grayscale(tmp_path):
    # 8x16 RGB pictures: class "bright" is white in the centre 8x8 and black at the sides, class "dark"
    # the reverse. Resize (shorter side 8: unchanged) + centre crop keeps only the centre.
    bright = np.zeros((8, 16, 3), np.uint8)
    bright[:, 4:12] = 255
    dark = 255 - bright
    for split, n in [("train", 3), ("val", 2)]:
        for i in range(n):
            _png(tmp_path / "imgs" / split / "bright" / f"{i}.png", bright)
            _png(tmp_path / "imgs" / split / "dark" / f"{i}.png", dark)
    out = tokenize(str(tmp_path / "imgs"), "pixel", tmp_path / "folder_codes", image_size=8, levels=5, **QUIET)
    m = read_manifest(out)
    assert m["dataset"] is None and m["num_classes"] == 2 and (m["height"], m["width"]) == (8, 8)
    codes, labels = _split(out, "train")
    assert codes.shape == (6, 64) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]  # ImageFolder: sorted names
    assert (codes[labels == 0] == 4).all() and (codes[labels == 1] == 0).all()
    assert len(_split(out, "val")[1]) == 4
    # One split (class folders directly under the root): a seeded tenth is held out as val.
    one = tokenize(str(tmp_path / "imgs" / "train"), "pixel", tmp_path / "one", image_size=8, levels=5, **QUIET)
    assert read_manifest(one)["splits"] == {"train": 5, "val": 1}


def test_vqvae_tokenizer_codes_decode_through_the_manifest(tmp_path):
    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig(hidden=8, codebook_size=16, code_dim=4)).eval()  # 8x8 digits -> 4x4 codes
    path = save_vqvae(vq, tmp_path / "vq" / "vqvae.pt")
    out = tokenize("digits", f"vqvae:{path}", tmp_path / "digits_vq", limit=100, **QUIET)
    m = read_manifest(out)
    assert m["tokenizer"] == {"name": "vqvae", "path": str(path.resolve())}
    assert m["splits"] == {"train": 100, "val": 100}
    assert (m["height"], m["vocab_size"], m["dataset"]) == (4, 16, "digits")
    images, _ = load_images("digits", "train")
    assert np.array_equal(_split(out, "train")[0], vq.encode(images[:100]).numpy())
    assert tokenizer_from_manifest(m).decode(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 1, 8, 8)


def test_fashion_overlay_moves_the_grids_onto_the_codes(tmp_path, tiny_codes):
    codes = tiny_codes("fashion_mnist_vq7", height=7, width=7, vocab_size=256, num_classes=10, n_train=64, n_val=64,
                       labels="cycle", tokenizer={"name": "vqvae", "path": "missing.pt"},
                       source="random 7x7 test codes", dataset="fashion_mnist")
    grids = [g for g in sorted((REPO / "experiments" / "grids").glob("*.yaml")) if g.name != "profiles.yaml"]
    for grid, profile in [*((g, "smoke") for g in grids), (ORDERS, "default")]:
        _, jobs = expand(grid, profile, root=str(tmp_path / "runs"), extra=[f"data.path={codes}"],
                         data="fashion_mnist")
        assert all("_fashion_mnist_vq7_" in j.run_id for j in jobs)
        steps = [json.loads(a.split("=", 1)[1]) for j in jobs for e in j.evals for a in e if "num_steps" in a]
        assert max(map(max, steps)) == 49  # the grids' N is the 49 tokens of a 7x7 code grid
    with pytest.raises(ConfigError, match="fashion_mnist"):
        expand(ORDERS, "smoke", root=str(tmp_path), data="imagenet_pixels")


@pytest.mark.slow
def test_fashion_mnist_vq_tokenize_train_evaluate(tmp_path):
    """Train a small VQ-VAE on a Fashion-MNIST subset, extract codes of a subset, then one run of the
    orders grid under the fashion_mnist smoke overlay, trained and evaluated (classifier features)."""
    from sar_lightning.evaluation.evaluate import evaluate
    from sar_lightning.training.train import train

    vq_dir = tmp_path / "vq"
    assert cli(["train-vq", "data=fashion_mnist", f"out={vq_dir}", "grid=7", "codebook_size=64", "hidden=16",
                "max_steps=30", "batch_size=64", "limit=1000", "threads=1"]) == 0
    metrics = json.loads((vq_dir / "metrics.json").read_text())
    assert metrics["val_recon_mse"] < metrics["val_recon_mse_init"] and metrics["val_usage"] > 0.1
    codes = tmp_path / "fashion_mnist_vq7"
    assert cli(["tokenize", "data=fashion_mnist", f"tokenizer=vqvae:{vq_dir / 'vqvae.pt'}", f"out={codes}",
                "limit=500", "threads=1", "no_progress=true"]) == 0
    m = read_manifest(codes)
    assert (m["height"], m["width"], m["vocab_size"], m["dataset"]) == (7, 7, 64, "fashion_mnist")

    _, jobs = expand(ORDERS, "smoke", root=str(tmp_path / "runs"), data="fashion_mnist",
                     extra=[f"data.path={codes}", "threads=1", "train.max_steps=6", "train.val_every=6",
                            "train.ckpt_every=6"])
    raster = next(j for j in jobs if j.label == "raster")
    from sar_lightning.config import load_config

    run = train(load_config(Path(raster.run_dir) / "config.yaml"))
    rows = evaluate(run, ["infer.num_steps=[4]", "infer.num_samples=20", "infer.batch_size=20",
                          "infer.timing_batch=4", "infer.timing_repeats=1"])
    assert [r["num_steps"] for r in rows] == [4] and rows[0]["extractor"] == "fashion_mnist_cnn"
    assert np.isfinite(rows[0]["fd"]) and list((run / "samples").glob("*.png"))

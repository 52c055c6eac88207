"""A CPU dry run of the paper's ImageNet configs: the real FMT-B file on random ImageNet-shaped codes,
trained two steps and evaluated through the FID path with stand-ins for the files we cannot ship."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO
from torch import nn

from sar_lightning.config import load_config
from sar_lightning.data.tokenizers import VQVAE, VQVAEConfig, save_vqvae
from sar_lightning.evaluation.evaluate import evaluate
from sar_lightning.training.train import train

FMT_B = REPO / "experiments" / "imagenet" / "fmt_B_sar_ts.yaml"


class InceptionStandIn(nn.Module):
    """The interface of ``features.get_inception_extractor``'s module (``name``, ``num_features``,
    ``[B, 3, H, W]`` in [0, 1] -> ``[B, 2048]``) without torch-fidelity's weights: pooled pixels
    through a fixed random projection."""

    name, num_features = "inception", 2048

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, 2048)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, images):
        return self.proj(nn.functional.adaptive_avg_pool2d(images, 4).flatten(1))


@pytest.mark.slow
def test_fmt_b_imagenet_config_trains_and_evaluates_on_cpu(tmp_path, monkeypatch, capsys, tiny_codes):
    # LlamaGen VQ-16 shape: 16x16 codes, vocabulary 16384, 1000 classes; its weights are not here.
    codes = tiny_codes("imagenet_vq16", height=16, width=16, vocab_size=16384, num_classes=1000, n_train=24, n_val=8,
                       tokenizer={"name": "llamagen_vq16", "path": str(tmp_path / "absent" / "vq_ds16_c2i.pt")},
                       source="random ImageNet-shaped codes", dataset=None)
    paper = load_config(FMT_B, [f"data.path={codes}"])  # the file as the cluster runs it
    assert (paper.model.name, paper.data.batch_size * paper.trainer.devices, paper.train.lr) == ("B", 256, 1e-4)
    assert paper.train.max_steps == 200 * 5005 and paper.infer.num_samples == 50 * 1000

    # model.name=small: on one CPU thread an FMT-B step takes 10-16 s, each checkpoint is ~2 GB (weights,
    # EMA, AdamW) and a 40-image sample grid at 16 steps ~40 s; everything else is the B file's recipe.
    cpu = [f"data.path={codes}", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto",
           "train.precision=32", "data.batch_size=2", "train.max_steps=2", "train.val_every=2", "train.ckpt_every=2",
           "train.val_batches=1", "train.sample_steps=[16]", "data.num_workers=0", "threads=1", f"root={tmp_path}",
           "trainer.enable_progress_bar=false", "model.name=small"]
    run = train(load_config(FMT_B, cpu))
    assert json.loads((run / "done.json").read_text())["global_step"] == 2
    assert "no sample grids" in capsys.readouterr().out and not (run / "samples").exists()  # no decoder here

    # FID path: a 2048-d reference npz and an Inception stand-in (neither file can be downloaded here).
    g = np.random.default_rng(1)
    a = g.normal(size=(2048, 32))
    np.savez(tmp_path / "ref_stats.npz", mu=g.normal(size=2048), sigma=a @ a.T / 32 + 0.1 * np.eye(2048))
    monkeypatch.setattr("sar_lightning.evaluation.features.get_inception_extractor", lambda path: InceptionStandIn())
    infer = ["infer.num_steps=[16]", "infer.cfg_scale=[1.0]", "infer.num_samples=6", "infer.batch_size=6",
             "infer.timing_batch=2", "infer.timing_repeats=1", f"infer.reference_stats={tmp_path / 'ref_stats.npz'}",
             f"infer.inception_weights={tmp_path / 'absent.pth'}"]
    with pytest.raises(FileNotFoundError, match="cannot decode samples.*vq_ds16_c2i.pt"):
        evaluate(run, infer)

    # A decoder of the same code grid and vocabulary (an untrained 16x16-code VQ-VAE, 32x32 RGB images)
    # stands in for LlamaGen's VQ-16, which loads only from its real 16384x8-codebook checkpoint.
    vq = save_vqvae(VQVAE(VQVAEConfig(channels=3, image_size=(32, 32), num_down=1, hidden=8, codebook_size=16384,
                                      code_dim=8)), tmp_path / "decoder" / "vqvae.pt")
    manifest = json.loads((codes / "manifest.json").read_text())
    manifest["tokenizer"] = {"name": "vqvae", "path": str(vq)}
    (codes / "manifest.json").write_text(json.dumps(manifest))
    (row,) = evaluate(run, infer)
    assert row["extractor"] == "inception" and row["reference_name"] == "ref_stats.npz"
    assert row["num_samples"] == 6 and np.isfinite(row["fd"]) and row["kid"] is None

"""Tokenizers: pixel round trip, VQ-VAE mechanics and training, LlamaGen VQ-16 layout and loading."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from sar_lightning.data.tokenizers import (
    VQVAE,
    LlamaGenVQ,
    LlamaGenVQConfig,
    PixelQuantizer,
    VQVAEConfig,
    codebook_usage,
    load_llamagen_vq16,
    load_vqvae,
    perplexity,
    save_vqvae,
)
from sar_lightning.data.tokenizers.llamagen import VQ16_FILE, VQModel
from sar_lightning.files import FileError


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions on a shared 2-core machine: one thread is ~10x faster than two competing.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    return torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16  # (1797, 1, 8, 8)


def test_pixel_quantizer_round_trip_is_exact(digits):
    tok = PixelQuantizer(levels=17)
    codes = tok.encode(digits)
    assert codes.shape == (len(digits), 64) and codes.max() <= 16
    assert torch.equal(tok.decode(codes), digits)


def test_usage_and_perplexity():
    assert codebook_usage(torch.tensor([0, 0, 1, 1]), 4) == 0.5
    assert perplexity(torch.tensor([0, 0, 1, 1]), 4) == pytest.approx(2.0)
    assert perplexity(torch.tensor([3, 3, 3]), 4) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [dict(image_size=(28, 28), num_down=3), dict(codebook_size=1),
                                 dict(codebook_update="kmeans"), dict(ema_decay=1.0), dict(hidden=0)])
def test_vqvae_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="vqvae"):
        VQVAEConfig(**bad)
    with pytest.raises(ValueError, match="unknown vqvae config keys"):
        VQVAEConfig.from_dict({"codebook": 3})


@pytest.mark.parametrize("size, num_down, grid", [((8, 8), 1, (4, 4)), ((28, 28), 2, (7, 7)), ((28, 28), 1, (14, 14))])
@pytest.mark.parametrize("update", ["loss", "ema"])
def test_vqvae_shapes_and_code_range(size, num_down, grid, update):
    cfg = VQVAEConfig(image_size=size, num_down=num_down, hidden=8, codebook_size=16, codebook_update=update)
    tok = VQVAE(cfg)
    x = torch.rand(3, 1, *size)
    codes = tok.encode(x)
    assert tok.grid == grid and codes.shape == (3, grid[0] * grid[1]) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < tok.vocab_size
    y = tok.decode(codes)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    out = tok(x)
    assert torch.equal(out.codes, codes) and out.recon.shape == x.shape


def test_straight_through_gradient_reaches_the_encoder():
    tok = VQVAE(VQVAEConfig(hidden=8, codebook_size=16, beta=0.0))  # beta 0: only the decoder path
    out = tok(torch.rand(4, 1, 8, 8))
    ((out.recon - 0.5) ** 2).mean().backward()
    g = tok.encoder[0].weight.grad
    assert g is not None and g.abs().sum() > 0


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_dead_code_restart_reinitialises_unused_codes(update):
    torch.manual_seed(0)
    cfg = VQVAEConfig(hidden=8, codebook_size=32, restart_window=3, codebook_update=update)
    q = VQVAE(cfg).quantizer.train()
    with torch.no_grad():  # one live code near the data, 31 far away on the other side
        q.embedding.weight[:] = -1.0
        q.embedding.weight[0] = 1.0
        if update == "ema":  # the EMA codebook is ema_sum / ema_count
            q.ema_sum.copy_(q.embedding.weight)
    z = torch.ones(2, cfg.code_dim, 4, 4) + 0.1 * torch.randn(2, cfg.code_dim, 4, 4)
    for _ in range(3):
        assert q(z).codes.eq(0).all()  # everything collapses onto code 0
    assert q.window_usage() == pytest.approx(1 / 32)
    before = q.codebook().clone()
    q(z)  # the window is full: dead codes restart from this batch's encoder outputs before the lookup
    after = q.codebook()
    moved = (after - before).norm(dim=1) > 1e-3
    assert moved[1:].all() and not moved[0]
    assert (after[1:] @ torch.nn.functional.normalize(z.mean((0, 2, 3)), dim=0)).min() > 0.9
    assert q.window_steps == 1  # a fresh window began


@pytest.mark.slow
def test_short_training_on_digits_lowers_reconstruction_error(digits, tmp_path):
    from sar_lightning.data.tokenizers.vq_module import train_vqvae

    cfg = VQVAEConfig(hidden=16, codebook_size=32, restart_window=20)
    tok, m = train_vqvae(digits[:1500], digits[1500:], cfg, tmp_path, max_steps=120, batch_size=64)
    assert m["steps"] == 120
    assert m["val_recon_mse"] < 0.3 * m["val_recon_mse_init"], m
    assert m["val_usage"] > 0.5, m
    assert (tmp_path / "vqvae.pt").exists() and (tmp_path / "vqvae.json").exists()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    # save/load round trip: identical codes and reconstructions
    loaded = load_vqvae(tmp_path)
    x = digits[1500:1600]
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert torch.equal(loaded.decode(tok.encode(x)), tok.decode(tok.encode(x)))


def test_vqvae_save_load_round_trip(tmp_path):
    cfg = VQVAEConfig(image_size=(28, 28), num_down=2, hidden=8, codebook_update="ema", l2_norm=False)
    tok = VQVAE(cfg)
    loaded = load_vqvae(save_vqvae(tok, tmp_path / "tok" / "vqvae.pt"))
    assert loaded.config == cfg
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded.encode(x), tok.encode(x))
    with pytest.raises(FileNotFoundError, match="train_vqvae"):
        load_vqvae(tmp_path / "nothing")


# --- LlamaGen VQ-16 ---------------------------------------------------------------------------------


def test_llamagen_vq16_full_size_layout_on_meta():
    with torch.device("meta"):
        model = VQModel(LlamaGenVQConfig())
    sd = model.state_dict()
    # 71.9M parameters: the paper's "VQ-16, 72M"
    assert sum(p.numel() for p in model.parameters()) == 71_883_403
    assert len(sd) == 344
    shapes = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.conv_blocks.0.downsample.conv.weight": (128, 128, 3, 3),
        "encoder.conv_blocks.2.res.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.conv_blocks.4.attn.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.mid.1.q.weight": (512, 512, 1, 1),
        "encoder.mid.2.conv2.weight": (512, 512, 3, 3),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "quant_conv.weight": (8, 256, 1, 1),
        "quantize.embedding.weight": (16384, 8),
        "quantize.codebook_used": (65536,),
        "post_quant_conv.weight": (256, 8, 1, 1),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.mid.0.norm1.weight": (512,),
        "decoder.conv_blocks.0.attn.2.v.weight": (512, 512, 1, 1),
        "decoder.conv_blocks.0.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.conv_blocks.1.res.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.conv_blocks.4.res.2.conv2.weight": (128, 128, 3, 3),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k
    assert "decoder.conv_blocks.4.upsample.conv.weight" not in sd  # the last level keeps its size
    assert "encoder.conv_blocks.4.downsample.conv.weight" not in sd
    assert not any(".attn." in k for k in sd if k.startswith(("encoder.conv_blocks.3", "decoder.conv_blocks.1")))


def test_llamagen_checkpoint_round_trip(tmp_path):
    cfg = LlamaGenVQConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=32, codebook_size=64, image_size=16)
    torch.manual_seed(0)
    ref = LlamaGenVQ(cfg).eval()
    path = tmp_path / VQ16_FILE
    torch.save({"model": ref.model.state_dict(), "steps": 1}, path)
    tok = load_llamagen_vq16(path, config=cfg)
    x = torch.rand(2, 3, 16, 16)
    codes = tok.encode(x)
    assert tok.grid == (8, 8) and codes.shape == (2, 64) and codes.max() < 64
    assert torch.equal(codes, ref.encode(x))
    y = tok.decode(codes)
    assert y.shape == x.shape and torch.equal(y, ref.decode(codes))
    torch.save(ref.model.state_dict(), path)  # a raw state dict loads too
    assert torch.equal(load_llamagen_vq16(path, config=cfg).encode(x), codes)
    bad = dict(ref.model.state_dict())
    bad.pop("quant_conv.bias")
    torch.save({"model": bad}, path)
    with pytest.raises(FileError, match="quant_conv.bias"):  # strict: layout mismatches fail, in one line
        load_llamagen_vq16(path, config=cfg)


def test_llamagen_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_llamagen_vq16(tmp_path / "nowhere.pt")
    msg = str(e.value)
    assert VQ16_FILE in msg and "huggingface.co/FoundationVision/LlamaGen" in msg and "path=" in msg

"""LlamaGen's pre-trained VQ-16 image tokenizer (ImageNet, 256x256 -> 16x16 codes, vocabulary 16384).

A re-implementation of ``tokenizer/tokenizer_image/vq_model.py`` of github.com/FoundationVision/LlamaGen
with the same module names and state-dict layout, so ``vq_ds16_c2i.pt`` loads with ``strict=True``.
Only inference is kept (no losses, no usage tracking; the ``quantize.codebook_used`` buffer exists only
so that the checkpoint's key set matches). LlamaGen works on images in [-1, 1]; the ``Tokenizer``
interface takes and returns [0, 1].
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sar_lightning.data.tokenizers.base import Tokenizer
from sar_lightning.files import FileError, safe_load

VQ16_FILE = "vq_ds16_c2i.pt"
VQ16_URL = "https://huggingface.co/FoundationVision/LlamaGen/resolve/main/vq_ds16_c2i.pt"
DEFAULT_VQ16_PATH = Path("pretrained_models") / VQ16_FILE  # where LlamaGen's own scripts look


@dataclass(frozen=True)
class LlamaGenVQConfig:
    """LlamaGen's ``ModelArgs`` plus the Encoder/Decoder defaults it relies on (VQ-16 by default)."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # len - 1 downsamplings: 5 levels -> /16
    num_res_blocks: int = 2
    z_channels: int = 256
    in_channels: int = 3
    image_size: int = 256

    def __post_init__(self):
        if any(self.ch * m % 32 for m in self.ch_mult):  # GroupNorm(32 groups) on every width
            raise ValueError(f"llamagen ch * ch_mult {self.ch} * {self.ch_mult} must be multiples of 32")
        if self.image_size % self.downsample:
            raise ValueError(f"llamagen image_size {self.image_size} must be divisible by {self.downsample}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def Normalize(ch):  # LlamaGen's name; its 'group' norm type
    return nn.GroupNorm(num_groups=32, num_channels=ch, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(0.0)  # no parameters; kept for the module layout
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, with 1x1-conv projections."""

    def __init__(self, in_channels):
        super().__init__()
        self.norm = Normalize(in_channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(in_channels, in_channels, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # (b, hw, c)
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v, as LlamaGen's bmm
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as taming-transformers


class Upsample(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(ch):  # mid.0, mid.1, mid.2
    return nn.ModuleList([ResnetBlock(ch, ch), AttnBlock(ch), ResnetBlock(ch, ch)])


def _res_attn(block: nn.Module, h):
    """One resolution level of Encoder or Decoder: its ResnetBlocks, each followed by its AttnBlock if any."""
    for j, res in enumerate(block.res):
        h = res(h)
        if len(block.attn) > 0:
            h = block.attn[j](h)
    return h


class Encoder(nn.Module):
    def __init__(self, cfg: LlamaGenVQConfig):
        super().__init__()
        ch, mult, n = cfg.ch, cfg.ch_mult, cfg.num_res_blocks
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        in_mult = (1, *mult)
        for i, m in enumerate(mult):
            block, block_in = nn.Module(), ch * in_mult[i]
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(n):
                block.res.append(ResnetBlock(block_in, ch * m))
                block_in = ch * m
                if i == len(mult) - 1:  # attention only at the lowest resolution
                    block.attn.append(AttnBlock(block_in))
            if i != len(mult) - 1:
                block.downsample = Downsample(block_in)
            self.conv_blocks.append(block)
        self.mid = _mid(block_in)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x):  # (B, 3, H, W) -> (B, z_channels, H/16, W/16)
        h = self.conv_in(x)
        for block in self.conv_blocks:
            h = _res_attn(block, h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: LlamaGenVQConfig):
        super().__init__()
        ch, mult, n = cfg.ch, cfg.ch_mult, cfg.num_res_blocks
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in)
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(len(mult))):  # conv_blocks[0] is the lowest resolution
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(n + 1):
                block.res.append(ResnetBlock(block_in, ch * mult[i]))
                block_in = ch * mult[i]
                if i == len(mult) - 1:
                    block.attn.append(AttnBlock(block_in))
            if i != 0:
                block.upsample = Upsample(block_in)
            self.conv_blocks.append(block)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, 3, padding=1)

    def forward(self, z):  # (B, z_channels, h, w) -> (B, 3, 16h, 16w)
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for block in self.conv_blocks:
            h = _res_attn(block, h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, n_e: int, e_dim: int, l2_norm: bool):
        super().__init__()
        self.n_e, self.e_dim, self.l2_norm = n_e, e_dim, l2_norm
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        self.register_buffer("codebook_used", torch.zeros(65536))  # LlamaGen's training-usage ring buffer

    def codebook(self):  # (n_e, e_dim)
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def indices(self, z):  # (B, e_dim, h, w) -> (B, h*w), raster order
        B = z.shape[0]
        z = z.permute(0, 2, 3, 1).flatten(0, 2)  # (B*h*w, e_dim)
        e = self.codebook()
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        d = z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * z @ e.t()  # (B*h*w, n_e)
        return d.argmin(1).view(B, -1)

    def get_codebook_entry(self, codes, grid):  # (B, h*w) -> (B, e_dim, h, w)
        h, w = grid
        return self.codebook()[codes].view(-1, h, w, self.e_dim).permute(0, 3, 1, 2)


class VQModel(nn.Module):
    """LlamaGen's ``VQModel``: encoder -> quant_conv -> quantize; post_quant_conv -> decoder."""

    def __init__(self, cfg: LlamaGenVQConfig = LlamaGenVQConfig()):
        super().__init__()
        self.config = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.codebook_embed_dim, cfg.codebook_l2_norm)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)


class LlamaGenVQ(Tokenizer):
    """A ``VQModel`` behind the ``Tokenizer`` interface: [0, 1] images <-> raster codes."""

    name = "llamagen_vq16"

    def __init__(self, cfg: LlamaGenVQConfig = LlamaGenVQConfig()):
        super().__init__()
        self.model = VQModel(cfg)
        s, g = cfg.image_size, cfg.image_size // cfg.downsample
        self.vocab_size, self.channels = cfg.codebook_size, cfg.in_channels
        self.image_size, self.grid = (s, s), (g, g)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, 256, 256) in [0, 1] -> (B, 256)
        if tuple(images.shape[1:]) != (self.channels, *self.image_size):
            raise ValueError(f"{self.name} expects images [B, {self.channels}, {self.image_size[0]}, "
                             f"{self.image_size[1]}] in [0, 1], got {list(images.shape)}")
        m = self.model
        z = m.quant_conv(m.encoder(images * 2 - 1))  # LlamaGen normalises with mean = std = 0.5
        return m.quantize.indices(z)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, 256) -> (B, 3, 256, 256) in [0, 1]
        m = self.model
        x = m.decoder(m.post_quant_conv(m.quantize.get_codebook_entry(codes, self.grid)))
        return ((x + 1) / 2).clamp(0, 1)


def _weights(ckpt: dict) -> dict:
    for key in ("model", "ema", "state_dict"):  # LlamaGen saves {"model", "optimizer", ..., "ema"?}
        if key in ckpt and isinstance(ckpt[key], dict):
            return ckpt[key]
    return ckpt  # a raw state dict


def load_llamagen_vq16(
    path: str | Path = DEFAULT_VQ16_PATH, device: str | torch.device = "cpu", config: LlamaGenVQConfig | None = None
) -> LlamaGenVQ:
    """Load LlamaGen's ``vq_ds16_c2i.pt`` (``config`` only to load smaller test builds of the same layout)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"LlamaGen VQ-16 tokenizer not found at {path}. Download {VQ16_FILE} (LlamaGen's ImageNet "
            f"VQ-16 tokenizer, published by FoundationVision at {VQ16_URL}), put it at {DEFAULT_VQ16_PATH} "
            "or anywhere else, and pass that file as `path=` to load_llamagen_vq16 "
            "(in a codes manifest: tokenizer.path)."
        )
    with torch.serialization.safe_globals([argparse.Namespace]):  # training checkpoints keep their args
        ckpt = safe_load(path, "LlamaGen VQ-16 tokenizer checkpoint (vq_ds16_c2i.pt)")
    weights = _weights(ckpt) if isinstance(ckpt, dict) else None
    tok = LlamaGenVQ(config or LlamaGenVQConfig())
    expected = tok.model.state_dict()
    if not isinstance(weights, dict) or set(weights) != set(expected):
        found = set(weights) if isinstance(weights, dict) else set()
        missing, extra = sorted(set(expected) - found), sorted(found - set(expected))
        raise FileError(f"{path} is not LlamaGen's VQ-16 tokenizer: {len(missing)} of its {len(expected)} weights "
                        f"are missing (e.g. {missing[:2]}) and {len(extra)} are unexpected (e.g. {extra[:2]}); "
                        f"use {VQ16_FILE} from LlamaGen's release")
    try:
        tok.model.load_state_dict(weights, strict=True)
    except RuntimeError as err:  # same names, other shapes (another codebook size or width)
        raise FileError(f"{path} does not fit the VQ-16 layout: {str(err).splitlines()[1].strip()[:200]}") from None
    return tok.to(device).eval()

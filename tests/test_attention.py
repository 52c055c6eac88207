"""The attention entry point picks a kernel from the mask's structure; every kernel computes what the
boolean mask (the reference) computes, for every FMT mask and interval shape, ragged last sets included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sar_lightning.core.attention import SetMask, attend, attention_kernel, current_kernel
from sar_lightning.core.masks import build_masks, set_masks
from sar_lightning.core.orders import make_order
from sar_lightning.models.registry import build_model

INTERVALS = {"ar": [1] * 16, "uniform": [4] * 4, "ragged": [3, 5, 1, 7], "ragged-last": [5, 5, 5, 1],
             "one-set": [16], "mar": [6, 10]}
MODES = ("block_causal", "own_set", "full")


@pytest.mark.parametrize("name", INTERVALS)
@pytest.mark.parametrize("mode", MODES)
def test_set_masks_are_the_reference_masks(name, mode):
    for rule, dense in zip(set_masks(INTERVALS[name], mode), build_masks(INTERVALS[name], mode)):
        assert torch.equal(rule.dense(), dense)


def test_plain_causal_is_recognised_only_where_it_holds():
    m_e, m_ds, m_dc = set_masks([1] * 16)
    assert m_e.causal and m_ds.causal and m_dc.causal  # the AR end: no mask tensor at all
    for intervals in ([2] * 8, [3, 5, 1, 7]):
        assert not any(m.causal for m in set_masks(intervals))
    assert not set_masks([1] * 16, "own_set")[1].causal


@pytest.mark.parametrize("kernel", ["auto", "flex"])
@pytest.mark.parametrize("name", INTERVALS)
@pytest.mark.parametrize("mode", MODES)
def test_every_kernel_matches_the_boolean_mask(kernel, name, mode):
    """Flex runs here through its eager CPU implementation (the compiled kernel needs CUDA)."""
    g = torch.Generator().manual_seed(0)
    for mask in set_masks(INTERVALS[name], mode):
        q = torch.randn(2, 3, len(mask.q_ids), 8, generator=g)
        k, v = torch.randn(2, 2, 3, len(mask.k_ids), 8, generator=g)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense())
        with attention_kernel(kernel):
            torch.testing.assert_close(attend(q, k, v, mask), ref, atol=1e-5, rtol=1e-5)


MODEL_CASES = [(name, mode, iv) for name, mode in [("tiny", "block_causal"), ("tiny", "own_set"), ("tiny", "full")]
               for iv in ("ar", "ragged", "uniform")] + [("gpt-tiny", "block_causal", "ar")]  # GPT: raster K = N
MODEL_INTERVALS = {"ar": [1] * 64, "ragged": [3, 7, 1, 20, 33], "uniform": [16] * 4}


@torch.no_grad()  # FlexAttention has no backward on CPU (its compiled CUDA kernel does): forward only here
@pytest.mark.parametrize("kernel", ["auto", "flex"])
@pytest.mark.parametrize("name, mode, iv", MODEL_CASES, ids=lambda c: str(c))
def test_model_logits_match_the_reference_path(kernel, name, mode, iv):
    intervals = MODEL_INTERVALS[iv]
    torch.manual_seed(0)
    model = build_model(name, decoder_attn=mode, class_dropout=0.0).eval()
    g = torch.Generator().manual_seed(1)
    tokens, labels = torch.randint(0, 17, (3, 64), generator=g), torch.tensor([0, 4, 9])
    order = make_order("raster" if name.startswith("gpt") else "random", 8, 8, 3, generator=g)
    with attention_kernel("dense"):
        ref = model(tokens, labels, order, intervals)
    with attention_kernel(kernel):
        torch.testing.assert_close(model(tokens, labels, order, intervals), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("queries, keys", [(1, 1), (1, 37), (4, 20), (16, 64), (17, 64)])
def test_few_unmasked_queries_match_the_flash_kernel(queries, keys):
    """A cached sampling step's attention (no mask, few queries): the matrix-product path on the CPU gives
    what PyTorch's kernel gives, over a cache slice as the KV cache hands it out."""
    g = torch.Generator().manual_seed(queries)
    q = torch.randn(5, 4, queries, 16, generator=g)
    cache_k, cache_v = torch.randn(2, 5, 4, 80, 16, generator=g)
    k, v = cache_k[:, :, :keys], cache_v[:, :, :keys]  # non-contiguous views, as KVSlot.append returns
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attend(q, k, v), ref, atol=1e-5, rtol=1e-5)
    with attention_kernel("dense"):
        assert torch.equal(attend(q, k, v), ref)  # the reference path is PyTorch's own kernel


def test_the_kernel_is_a_context_restored_after_its_block():
    assert current_kernel() == "auto"
    with attention_kernel("dense"):
        assert current_kernel() == "dense"
        with attention_kernel("flex"):
            assert current_kernel() == "flex"
        assert current_kernel() == "dense"
    assert current_kernel() == "auto"
    with pytest.raises(ValueError, match="unknown attention kernel"):
        with attention_kernel("fast"):
            pass


def test_a_bad_rule_is_refused():
    with pytest.raises(ValueError, match="valid"):
        SetMask(torch.arange(3), torch.arange(3), "ge")

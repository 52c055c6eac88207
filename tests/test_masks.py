"""Set ids, the three FMT masks and the loss selection (docs/method.md section 4)."""

import pytest
import torch

from sar_lightning.core.intervals import make_intervals
from sar_lightning.core.masks import (
    DECODER_MODES,
    build_masks,
    cell_set_ids,
    decoder_cross_mask,
    decoder_self_mask,
    encoder_mask,
    encoder_set_ids,
    loss_positions,
    set_ids,
)
from sar_lightning.core.orders import make_order


def random_intervals(n, seed):
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(1, n + 1, (), generator=g))
    return make_intervals("random", n, k, generator=g)


def test_set_ids():
    assert set_ids([2, 1, 3]).tolist() == [1, 1, 2, 3, 3, 3]
    assert encoder_set_ids([2, 1, 3]).tolist() == [0, 1, 1, 2]  # cls, then every set but the last
    assert encoder_set_ids([5]).tolist() == [0]


def test_ar_check_raster_all_ones():
    n = 16
    m_e, m_ds, m_dc = build_masks([1] * n)
    tril = torch.ones(n, n, dtype=torch.bool).tril()
    assert torch.equal(m_ds, tril)
    assert m_dc.shape == (n, n)  # cls + x_0 .. x_{N-2}
    # query i sees cls (column 0) and tokens 0 .. i-1 (columns 1 .. i): next-token prediction
    assert torch.equal(m_dc, tril)
    assert torch.equal(m_e, tril)  # causal encoder over cls + tokens


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("mode", DECODER_MODES)
def test_no_empty_rows(seed, mode):
    intervals = random_intervals(64, seed)
    m_e, m_ds, m_dc = build_masks(intervals, mode)
    ctx = 1 + 64 - intervals[-1]  # cls + every set but the last
    assert m_e.shape == (ctx, ctx) and m_ds.shape == (64, 64) and m_dc.shape == (64, ctx)
    for m in (m_e, m_ds, m_dc):
        assert bool(m.any(1).all())
    assert bool(m_dc[:, 0].all())  # every query sees the class token


@pytest.mark.parametrize("seed", range(4))
def test_masks_follow_set_ids(seed):
    intervals = random_intervals(32, seed)
    s, e = set_ids(intervals), encoder_set_ids(intervals)
    m_e, m_ds, m_dc = build_masks(intervals)
    for a in range(len(e)):
        for b in range(len(e)):
            assert bool(m_e[a, b]) == (int(e[b]) <= int(e[a]))
    for i in range(len(s)):
        for j in range(len(s)):
            assert bool(m_ds[i, j]) == (int(s[j]) <= int(s[i]))
        for b in range(len(e)):
            assert bool(m_dc[i, b]) == (int(e[b]) < int(s[i]))


def test_encoder_mask_is_block_causal():
    e = encoder_set_ids([2, 3, 1])  # [0, 1, 1, 2, 2, 2]
    m = encoder_mask(e)
    assert bool(m[1:3, 1:3].all()) and bool(m[3:, 3:].all())  # full inside a set
    assert bool(m[:, 0].all())  # everyone sees cls
    assert not bool(m[1:3, 3:].any()) and not bool(m[0, 1:].any())  # never a later set
    assert bool(m[3:, :3].all())


def test_decoder_modes():
    s = set_ids([2, 3])
    own = decoder_self_mask(s, "own_set")
    assert bool(own[:2, :2].all()) and bool(own[2:, 2:].all())
    assert not bool(own[:2, 2:].any()) and not bool(own[2:, :2].any())
    assert bool(decoder_self_mask(s, "full").all())
    causal = decoder_self_mask(s, "block_causal")
    assert bool(causal[2:, :2].all()) and not bool(causal[:2, 2:].any())
    with pytest.raises(ValueError, match="block_causal"):
        decoder_self_mask(s, "sideways")


def test_cross_mask_sees_only_earlier_sets():
    intervals = [2, 3, 1]
    m = decoder_cross_mask(set_ids(intervals), encoder_set_ids(intervals))
    assert m.tolist()[0] == [True, False, False, False, False, False]  # set 1: cls only
    assert m.tolist()[2] == [True, True, True, False, False, False]  # set 2: cls + set 1
    assert m.tolist()[5] == [True] * 6  # set 3: cls + sets 1, 2


def test_cell_set_ids_inverts_the_order():
    g = torch.Generator().manual_seed(0)
    order = make_order("random", 4, 4, 3, generator=g)
    intervals = [3, 5, 8]
    ids = cell_set_ids(order, intervals)
    s = set_ids(intervals)
    for b in range(3):
        for t in range(16):
            assert int(ids[b, order[b, t]]) == int(s[t])
    assert torch.equal(ids.gather(1, order), s.expand(3, -1))


def test_loss_positions():
    iv = [2, 3, 1]
    assert loss_positions(iv).tolist() == [True] * 6
    assert loss_positions(iv, first_set_loss=False).tolist() == [False, False, True, True, True, True]
    assert loss_positions(iv, last_set_only=True).tolist() == [False] * 5 + [True]
    assert loss_positions([6], first_set_loss=False).tolist() == [True] * 6  # K = 1 keeps its only set

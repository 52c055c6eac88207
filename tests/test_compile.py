"""train.compile: the compiled training loss takes fixed-shape inputs (intervals as set ids), computes what
the eager loss computes, and is compiled once however the intervals vary from batch to batch."""

from __future__ import annotations

import pytest
import torch

from sar_lightning.core.intervals import make_intervals
from sar_lightning.core.masks import set_ids
from sar_lightning.core.orders import make_order
from sar_lightning.models.registry import build_model

CASES = [("block_causal", True), ("block_causal", False), ("own_set", True), ("full", False)]


def _batch(g, n=64):
    return torch.randint(0, 17, (4, n), generator=g), torch.tensor([0, 3, 5, 9]), make_order("random", 8, 8, 4,
                                                                                             generator=g)


@pytest.mark.parametrize("mode, first_set_loss", CASES)
def test_fixed_shape_loss_equals_the_loss(mode, first_set_loss):
    torch.manual_seed(0)
    model = build_model("tiny", decoder_attn=mode, first_set_loss=first_set_loss, class_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    for intervals in ([1] * 64, [3, 7, 1, 20, 33], make_intervals("random", 64, 16, generator=g), [64], [40, 24]):
        tokens, labels, order = _batch(g)
        loss, acc = model.loss(tokens, labels, order, intervals)
        fixed, fixed_acc = model.loss_from_set_ids(tokens, labels, order, set_ids(intervals))
        torch.testing.assert_close(fixed, loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fixed_acc, acc)


def test_new_intervals_do_not_recompile():
    graphs = []

    def counting_backend(gm, example_inputs):  # called once per compiled graph
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    model = build_model("tiny", class_dropout=0.0)
    loss_fn = model.compiled_loss(backend=counting_backend, dynamic=False)
    g = torch.Generator().manual_seed(1)
    losses = []
    for k in (2, 4, 16, 16, 64, 7):
        tokens, labels, order = _batch(g)
        intervals = make_intervals("random", 64, k, generator=g)
        loss, _ = loss_fn(tokens, labels, order, intervals)
        loss.backward()
        losses.append(loss.item())
        torch.testing.assert_close(loss, model.loss(tokens, labels, order, intervals)[0], atol=1e-5, rtol=1e-5)
    assert len(graphs) == 1, f"{len(graphs)} graphs for 6 batches with different intervals"
    assert len(set(losses)) == len(losses)

"""Sampling speed on CPU: KV cache vs recomputation vs one forward pass (docs/method.md section 5).

Times ``generate`` for the ``small`` FMT (random init, eval, float32, 8x8 grid, vocab 17, N = 64, no CFG)
with K = 4, 16, 64 uniform sets in a random order, with and without the KV cache, and one
teacher-forced forward over the whole sequence (random-16 intervals): the floor, since a cached
sampler passes each token through the encoder and each query through the decoder once. Seconds per
image at a fixed batch, median of ``--repeats`` after one warm-up call each. Targets: cached K = 16
within 2x of the forward; the cache at least 4x faster than recomputation at K = 64.

With ``--train`` it measures training throughput instead (tokens per second of one AdamW step,
forward + backward, at the same batch) for FMT-small as raster-64-ar, random-16-random and
random-2-mar, and for the GPT baseline of the same width and depth, with ratios to the GPT.

    python -m sar_lightning.bench [--batch 64] [--repeats 3] [--threads N] [--train]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from .intervals import make_intervals
from .model import build_model
from .orders import make_order
from .sampling import Sampler, generate

STEPS = (4, 16, 64)


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def measure(batch: int = 64, repeats: int = 3) -> dict[str, float]:
    """Seconds per image: ``forward``, ``cached_K<k>`` and ``uncached_K<k>`` for k in ``STEPS``."""
    torch.manual_seed(0)
    model = build_model("small", vocab_size=17, height=8, width=8).eval()
    n = model.num_tokens
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(batch) % model.config.num_classes
    tokens = torch.randint(0, model.config.vocab_size, (batch, n), generator=g)
    order = make_order("random", model.height, model.width, batch, generator=g)
    intervals = make_intervals("random", n, 16, generator=g)
    out = {"forward": timed(lambda: model(tokens, labels, order, intervals), repeats) / batch}
    index = torch.arange(batch)
    for k in STEPS:
        for cache in (True, False):
            sampler = Sampler("random", "uniform", k, kv_cache=cache, seed=1)
            labels, kwargs = sampler.request(model, index, model.config.num_classes)
            out[f"{'cached' if cache else 'uncached'}_K{k}"] = timed(partial(generate, model, labels, **kwargs),
                                                                      repeats) / batch
    return out


def report(t: dict[str, float], batch: int, repeats: int) -> str:
    lines = [
        f"small FMT, CPU float32, {torch.get_num_threads()} thread(s), batch {batch}, N = 64, "
        f"median of {repeats}; seconds per image",
        "",
        f"{'steps K':>8} | {'KV cache':>10} | {'recompute':>10} | {'recompute / cache':>17}",
        f"{'-' * 8}-+-{'-' * 10}-+-{'-' * 10}-+-{'-' * 17}",
    ]
    for k in STEPS:
        c, u = t[f"cached_K{k}"], t[f"uncached_K{k}"]
        lines.append(f"{k:>8} | {c:>10.6f} | {u:>10.6f} | {u / c:>16.2f}x")
    lines.append(f"{'forward':>8} | {t['forward']:>10.6f} |  (one teacher-forced pass, random-16 intervals)")
    r1 = t["cached_K16"] / t["forward"]
    r2 = t["uncached_K64"] / t["cached_K64"]
    lines += [
        "",
        f"cached K=16 / forward        = {r1:5.2f}x  (target <= 2x: {'ok' if r1 <= 2 else 'MISSED'})",
        f"uncached K=64 / cached K=64  = {r2:5.2f}x  (target >= 4x: {'ok' if r2 >= 4 else 'MISSED'})",
    ]
    return "\n".join(lines)


TRAIN_SETUPS = {  # name -> (model, order, schedule, K)
    "raster-64-ar": ("small", "raster", "ar", None),
    "random-16-random": ("small", "random", "random", 16),
    "random-2-mar": ("small", "random", "mar", None),
    "gpt-small (raster)": ("gpt-small", "raster", "ar", None),
}


def _train_step(model, opt, tokens, labels, order_name, schedule, k, g):
    order = make_order(order_name, model.height, model.width, len(tokens), generator=g)
    loss, _ = model.loss(tokens, labels, order, make_intervals(schedule, model.num_tokens, k, generator=g))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure_training(batch: int = 64, repeats: int = 3) -> dict[str, float]:
    """Training tokens per second for each of ``TRAIN_SETUPS`` (intervals redrawn every step)."""
    out = {}
    for name, (size, order_name, schedule, k) in TRAIN_SETUPS.items():
        torch.manual_seed(0)
        model = build_model(size, vocab_size=17, height=8, width=8, first_set_loss=schedule != "mar")
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, 17, (batch, model.num_tokens), generator=g)
        step = partial(_train_step, model, torch.optim.AdamW(model.parameters(), lr=1e-4), tokens,
                       torch.arange(batch) % 10, order_name, schedule, k, g)
        out[name] = batch * model.num_tokens / timed(step, repeats)
    return out


def report_training(t: dict[str, float], batch: int) -> str:
    gpt = t["gpt-small (raster)"]
    lines = [f"training throughput, CPU float32, {torch.get_num_threads()} thread(s), batch {batch}, N = 64",
             "", f"{'setup':>20} | {'tokens/s':>9} | {'vs GPT':>7}", f"{'-' * 20}-+-{'-' * 9}-+-{'-' * 7}"]
    lines += [f"{name:>20} | {v:>9.0f} | {v / gpt:>6.2f}x" for name, v in t.items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--train", action="store_true", help="measure training throughput instead")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train:
        print(report_training(measure_training(args.batch, args.repeats), args.batch))
    else:
        print(report(measure(args.batch, args.repeats), args.batch, args.repeats))


if __name__ == "__main__":
    main()

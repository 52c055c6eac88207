"""Sampling speed on CPU: KV cache vs recomputation vs one forward pass (docs/method.md section 5).

Times ``generate`` for the ``small`` FMT (random init, eval, float32, 8x8 grid, vocab 17, N = 64, no CFG)
with K = 4, 16, 64 uniform sets in a random order, with and without the KV cache, and one
teacher-forced forward over the whole sequence (random-16 intervals): the floor, since a cached
sampler passes each token through the encoder and each query through the decoder once. Seconds per
image at a fixed batch, median of ``repeats`` rounds after one warm-up call each; every round times each
configuration once, in turn, so that ratios are fair on a machine whose speed drifts. Targets: cached K = 16
within 2x of the forward; the cache at least 4x faster than recomputation at K = 64.

With ``train=true`` it measures training throughput instead (tokens per second of one AdamW step,
forward + backward, at the same batch) for FMT-small as raster-64-ar, random-16-random and
random-2-mar, and for the GPT baseline of the same width and depth, with ratios to the GPT.

The AR-end table (FMT-small at raster K = N against gpt-small, batch 32, 8x8 and 16x16) takes ``width``
for both models (the issue's first measurement used width 256; ``small`` is 96 wide): the narrower the
model, the more a cached step's time is per-operation overhead rather than arithmetic.

    python -m sar_lightning bench [batch=64] [repeats=3] [threads=N] [train=true] [compile=true] [width=W]
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

from sar_lightning.core.intervals import make_intervals
from sar_lightning.core.orders import make_order
from sar_lightning.core.sampling import Sampler, generate
from sar_lightning.models.registry import MODELS, build_model

STEPS = (4, 16, 64)


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    return interleaved({"fn": fn}, repeats)["fn"]


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median wall time of each ``fns[name]()`` over ``repeats`` rounds, after one warm-up call each. Every
    round calls each function once, in turn, so a machine that slows down or speeds up during the
    measurement moves all of them alike and their ratios stay fair (this 2-core machine drifts 10-30%)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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
    fns = {"forward": partial(model, tokens, labels, order, intervals)}
    index = torch.arange(batch)
    for k in STEPS:
        for cache in (True, False):
            sampler = Sampler("random", "uniform", k, kv_cache=cache, seed=1)
            labels, kwargs = sampler.request(model, index, model.config.num_classes)
            fns[f"{'cached' if cache else 'uncached'}_K{k}"] = partial(generate, model, labels, **kwargs)
    return {name: t / batch for name, t in interleaved(fns, repeats).items()}


def flops(fn) -> int:
    """Floating-point operations ``fn()`` performs, counted by PyTorch's FlopCounterMode (matmuls, attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@torch.inference_mode()
def measure_ar_end(batch: int = 32, repeats: int = 3, sides=(8, 16), compile: bool = False,
                   width: int | None = None) -> list[dict]:
    """The FMT at the AR end (raster, K = N, KV cache) against the GPT baseline of equal width and depth,
    per grid side: FLOPs per image of one teacher-forced forward, sampling seconds per image, and the
    FMT's cached K = N sampling against its own forward. With ``compile`` also both samplers with the
    compiled step (``generate(compile=True)``; compiled in the warm-up call, which is not timed). ``width``:
    both models' width instead of small's 96 (4 heads, SwiGLU hidden 3 x width; depth stays small's 3 + 3)."""
    rows, wide = [], {} if width is None else {"dim": width, "ffn_multiple": width}
    for side in sides:
        n, vocab = side * side, 17 if side <= 8 else 256
        row, fns = {"grid": f"{side}x{side}", "width": width or MODELS["small"]["dim"]}, {}
        for name in ("small", "gpt-small"):
            torch.manual_seed(0)
            model = build_model(name, vocab_size=vocab, height=side, width=side, **wide).eval()
            tokens = torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(0))
            labels, kwargs = Sampler("raster", "uniform", n, seed=1).request(model, torch.arange(batch), 10)
            forward = partial(model, tokens, labels, kwargs["order"], [1] * n)
            row[f"{name}_flops"] = flops(forward) / batch
            fns[f"{name}_forward"], fns[f"{name}_sample"] = forward, partial(generate, model, labels, **kwargs)
            if compile:
                fns[f"{name}_compiled"] = partial(generate, model, labels, **(kwargs | {"compile": True}))
        row.update({key: t / batch for key, t in interleaved(fns, repeats).items()})  # FMT and GPT in turn
        rows.append(row)
    return rows


def report_ar_end(rows: list[dict], batch: int) -> str:
    lines = [f"FMT-small at the AR end (raster, K = N, KV cache) vs gpt-small (same width and depth), "
             f"width {rows[0].get('width', MODELS['small']['dim'])}, batch {batch}",
             "", "grid  | FLOPs FMT/GPT | sample s/img FMT | GPT      | time FMT/GPT | FMT sample / forward",
             "------+---------------+------------------+----------+--------------+---------------------"]
    for r in rows:
        fr, tr = r["small_flops"] / r["gpt-small_flops"], r["small_sample"] / r["gpt-small_sample"]
        sf = r["small_sample"] / r["small_forward"]
        lines.append(f"{r['grid']:<5} | {fr:>12.2f}x | {r['small_sample']:>16.5f} | {r['gpt-small_sample']:.5f} | "
                     f"{tr:>11.2f}x | {sf:>19.2f}x")
    if "small_compiled" in rows[0]:
        lines += ["", "the same with the compiled step (generate(compile=True))",
                  "grid  | sample s/img FMT | GPT      | time FMT/GPT | FMT sample / forward | FMT eager / compiled",
                  "------+------------------+----------+--------------+----------------------+---------------------"]
        for r in rows:
            fmt, gpt = r["small_compiled"], r["gpt-small_compiled"]
            lines.append(f"{r['grid']:<5} | {fmt:>16.5f} | {gpt:.5f} | {fmt / gpt:>11.2f}x | "
                         f"{fmt / r['small_forward']:>19.2f}x | {r['small_sample'] / fmt:>19.2f}x")
    lines.append("targets: time ratio within 1.1x of the FLOP ratio; FMT cached K = N sampling <= 2.0x one forward")
    return "\n".join(lines)


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


def matmul_peak(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of one large float32 matmul on this machine: the "hardware" that training is measured against."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / timed(lambda: a @ b, repeats)


def measure_training(batch: int = 64, repeats: int = 3) -> dict[str, dict]:
    """Per setup of ``TRAIN_SETUPS`` (intervals redrawn every step): tokens per second and FLOP/s of one
    AdamW step (forward + backward, FLOPs counted by PyTorch on one step)."""
    steps, counted = {}, {}
    for name, (size, order_name, schedule, k) in TRAIN_SETUPS.items():
        torch.manual_seed(0)
        model = build_model(size, vocab_size=17, height=8, width=8, first_set_loss=schedule != "mar")
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, 17, (batch, model.num_tokens), generator=g)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as module.configure_optimizers on CPU
        steps[name] = partial(_train_step, model, opt, tokens, torch.arange(batch) % 10, order_name, schedule, k, g)
        counted[name] = (batch * model.num_tokens, flops(steps[name]))
    seconds = interleaved(steps, repeats)  # every setup once per round: drift moves them alike
    return {name: {"tokens_per_s": tokens / seconds[name], "flop_per_s": ops / seconds[name]}
            for name, (tokens, ops) in counted.items()}


def report_training(t: dict[str, dict], batch: int, peak: float) -> str:
    gpt = t["gpt-small (raster)"]["tokens_per_s"]
    lines = [f"training throughput, CPU float32, {torch.get_num_threads()} thread(s), batch {batch}, N = 64; "
             f"matmul peak {peak / 1e9:.1f} GFLOP/s (1024^2 float32)", "",
             f"{'setup':>20} | {'tokens/s':>9} | {'vs GPT':>7} | {'GFLOP/s':>8} | {'of peak':>7}",
             f"{'-' * 20}-+-{'-' * 9}-+-{'-' * 7}-+-{'-' * 8}-+-{'-' * 7}"]
    lines += [f"{name:>20} | {v['tokens_per_s']:>9.0f} | {v['tokens_per_s'] / gpt:>6.2f}x | "
              f"{v['flop_per_s'] / 1e9:>8.2f} | {v['flop_per_s'] / peak:>6.1%}" for name, v in t.items()]
    lines.append("target: FMT tokens/s >= 0.85x the GPT's at equal width and depth (raster-64-ar row)")
    return "\n".join(lines)


@dataclass
class BenchArgs:
    """``python -m sar_lightning bench`` keys."""

    batch: int = 64
    repeats: int = 3
    threads: int | None = None  # torch CPU threads (default: torch's)
    train: bool = False  # measure training throughput instead
    # also time the AR end with the compiled sampling step (torch.compile; a few minutes of compiling on a CPU)
    compile: bool = False
    width: int | None = None  # width of both models in the AR-end table (default: small's 96; the used 256)


def bench_command(args: BenchArgs) -> None:
    """Print the sampling tables, or with ``args.train`` the training one."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train:
        print(report_training(measure_training(args.batch, args.repeats), args.batch, matmul_peak()))
    else:
        print(report(measure(args.batch, args.repeats), args.batch, args.repeats))
        print()
        print(report_ar_end(measure_ar_end(32, args.repeats, compile=args.compile, width=args.width), 32))

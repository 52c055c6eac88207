"""GPU check: training throughput, cached vs uncached sampling, sampling speed and DDP, in a few minutes.

    python -m sar_lightning gpu-check [steps=30] [batch=32] [out=runs/gpu_check.md] [budget=270]
                                      [size=B|L|XL] [sample_bf16=true]

Prints Markdown tables (and writes them to ``out``) on random 16x16 codes (vocab 16384, 1000 classes):

1. training tokens/s, bf16 autocast + AdamW, FMT-B (random-16-random and raster-256-ar, orders and intervals
   redrawn every step) and GPT-B (raster), per attention kernel (``dense`` mask vs ``auto``), eager and
   ``torch.compile``'d (the model's ``loss``, as ``train.compile`` does);
2. cached == uncached sampling in fp32: FMT-B with sharpened random weights, a random order, K = 16 random
   intervals, the same seeds, the uncached pass under each kernel;
3. sampling seconds per image with the KV cache: FMT-B at K = 16, 64, 256 (uniform), GPT-B at K = 256;
4. ten DDP steps of experiments/smoke.yaml on 2 GPUs (skipped with fewer).

A cell that would start after ``budget`` seconds reads "skipped (time budget)". The compiled training
cells, the slowest, run last and take what the budget leaves. Exit status 1 when a correctness check
fails (cached != uncached tokens, the DDP run), else 0. Without CUDA it prints one line and exits 0.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from sar_lightning.config import ConfigError
from sar_lightning.core.attention import attention_kernel
from sar_lightning.core.intervals import make_intervals
from sar_lightning.core.orders import make_order
from sar_lightning.core.sampling import Sampler, generate, image_seeds
from sar_lightning.files import atomic_write_text
from sar_lightning.models.registry import build_model
from sar_lightning.speed.bench import timed

NO_CUDA = "gpu-check: no CUDA device here; nothing to check (this check needs a GPU)"
IMAGENET = dict(vocab_size=16384, num_classes=1000, height=16, width=16)
KERNELS = ("dense", "auto")
SKIPPED = "skipped (time budget)"
COMPILE_RESERVE_S = 60  # a compiled cell starts only with this much budget left (compiling a B model takes a while)
REPO = Path(__file__).resolve().parents[2]
DDP_ARGS = ["trainer.accelerator=gpu", "trainer.devices=2", "trainer.strategy=ddp", "train.max_steps=10",
            "train.val_every=10", "train.ckpt_every=10", "train.val_batches=1", "train.log_every=5",
            "train.sample_steps=[1]", "trainer.enable_progress_bar=false"]


@dataclass
class Plan:
    """What to check and how hard: the defaults are the GPU run; the tests shrink it onto the CPU."""

    device: torch.device
    size: str = "B"  # FMT-<size> and gpt-<size>
    dims: dict = field(default_factory=lambda: dict(IMAGENET))
    batch: int = 32
    steps: int = 30  # timed training steps per cell, after `warmup` untimed ones
    warmup: int = 3
    repeats: int = 2  # sampling: median of this many calls, after one warm-up call
    sample_bf16: bool = False
    budget_s: float = 270.0

    def __post_init__(self):
        self.start = time.monotonic()

    def time_left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    @property
    def num_tokens(self) -> int:
        return self.dims["height"] * self.dims["width"]

    def setups(self) -> list[tuple]:
        """Training setups: (row label, model name, order, interval schedule, K)."""
        n, s = self.num_tokens, self.size
        return [(f"FMT-{s} random-16-random", s, "random", "random", 16),
                (f"FMT-{s} raster-{n}-ar", s, "raster", "ar", None),
                (f"GPT-{s} raster", f"gpt-{s}", "raster", "ar", None)]

    def log(self, msg: str) -> None:
        print(f"[gpu-check {time.monotonic() - self.start:5.0f}s] {msg}", file=sys.stderr, flush=True)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__


def _build(plan: Plan, name: str, seed: int = 0):
    torch.manual_seed(seed)
    with torch.device(plan.device):
        return build_model(name, **plan.dims)


def markdown_table(header: list, rows: list[list]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


# --- 1. training throughput ---

def _graphs_compiled() -> int:
    return counters["stats"]["unique_graphs"]


def _steps_per_second(step, plan: Plan) -> tuple[float, int]:
    """Steps per second over ``plan.steps`` steps (fewer when the budget runs out) after the warm-up, and how
    many graphs torch.compile (FlexAttention included) compiled during the timed steps."""
    for _ in range(plan.warmup):
        step()
    _sync(plan.device)
    start, done, graphs = time.perf_counter(), 0, _graphs_compiled()
    while done < plan.steps and (done == 0 or plan.time_left() > 0):
        step()
        done += 1
    _sync(plan.device)
    return done / (time.perf_counter() - start), _graphs_compiled() - graphs


def train_throughput(plan: Plan, name: str, order: str, schedule: str, k, kernel: str,
                     compiled: bool) -> tuple[float, int]:
    """Training tokens/s of model ``name`` (bf16 autocast, AdamW, a fresh order and intervals every step) and
    the graphs compiled while timed (recompiles: new interval shapes)."""
    model = _build(plan, name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if compiled:
        torch._dynamo.reset()  # earlier cells' graphs would count against this one's recompile limit
    loss_fn = model.compiled_loss() if compiled else model.loss  # as train.compile does: fixed shapes
    n, b, g = model.num_tokens, plan.batch, torch.Generator().manual_seed(0)
    tokens = torch.randint(0, plan.dims["vocab_size"], (b, n), device=plan.device)
    labels = torch.arange(b, device=plan.device) % plan.dims["num_classes"]

    def step():
        order_t = make_order(order, model.height, model.width, b, generator=g).to(plan.device)
        with torch.autocast(plan.device.type, dtype=torch.bfloat16):
            loss, _ = loss_fn(tokens, labels, order_t, make_intervals(schedule, n, k, generator=g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with attention_kernel(kernel):
        rate, graphs = _steps_per_second(step, plan)
    return b * n * rate, graphs


def train_cell(plan: Plan, setup: tuple, kernel: str, compiled: bool) -> str:
    """One table cell: tokens/s, or why there is no number."""
    if plan.time_left() <= (COMPILE_RESERVE_S if compiled else 0):
        return SKIPPED
    label, name, order, schedule, k = setup
    try:
        rate, graphs = train_throughput(plan, name, order, schedule, k, kernel, compiled)
        cell = f"{rate:,.0f}" + (f" ({graphs} graphs compiled while timed)" if graphs else "")
    except Exception as err:  # a failed compile (or OOM) is a finding, not a crash
        cell = f"{'compile failed' if compiled else 'failed'}: {first_line(err)}"
    _free(plan.device)
    plan.log(f"train {label}, {kernel} {'compiled' if compiled else 'eager'}: {cell}")
    return cell


def training_cells(plan: Plan, compiled: bool) -> dict:
    """``{(label, kernel, compiled): cell}``; compiled cells take ``auto`` first (what training uses)."""
    kernels = KERNELS[::-1] if compiled else KERNELS
    return {(s[0], kern, compiled): train_cell(plan, s, kern, compiled) for kern in kernels for s in plan.setups()}


def training_table(plan: Plan, cells: dict) -> str:
    cols = [(kern, c) for c in (False, True) for kern in KERNELS]
    header = ["setup", *(f"{kern} {'compiled' if c else 'eager'}" for kern, c in cols)]
    rows = [[label, *(cells.get((label, kern, c), SKIPPED) for kern, c in cols)] for label, *_ in plan.setups()]
    return (f"## 1. Training throughput (tokens/s)\n\nbf16 autocast, AdamW, batch {plan.batch}, N = {plan.num_tokens},"
            f" vocab {plan.dims['vocab_size']}; {plan.steps} timed steps after {plan.warmup} warm-up steps; "
            f"compiled = model.compiled_loss() (fixed-shape loss, as train.compile)\n\n{markdown_table(header, rows)}")


# --- 2. cached == uncached sampling ---

def sampling_agreement(plan: Plan, model, kernel: str, k: int = 16, labels=(0, 1, 207, 999)) -> tuple[int, int]:
    """``(differing tokens, tokens compared)`` between cached and uncached sampling, same order and seeds."""
    g = torch.Generator().manual_seed(0)
    lab = torch.tensor(labels, device=plan.device) % plan.dims["num_classes"]
    kwargs = dict(order=make_order("random", model.height, model.width, len(lab), generator=g).to(plan.device),
                  intervals=make_intervals("random", model.num_tokens, k, generator=g),
                  seeds=image_seeds(0, torch.arange(len(lab))).to(plan.device))
    with attention_kernel(kernel):
        cached, uncached = [generate(model, lab, kv_cache=c, **kwargs) for c in (True, False)]
    return int((cached != uncached).sum()), cached.numel()


def sharpened(plan: Plan, scale: float = 3.0):
    """FMT with random weights scaled up, so logits and attention are peaked and a mismatch would show."""
    model = _build(plan, plan.size, seed=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(scale)
    return model


def agreement_table(plan: Plan) -> tuple[str, bool]:
    rows, ok, model = [], True, None
    for kernel in KERNELS:
        cells = [SKIPPED, ""]
        if plan.time_left() > 0:
            try:
                model = sharpened(plan) if model is None else model
                diff, total = sampling_agreement(plan, model, kernel)
                cells = ["yes" if diff == 0 else "**NO**", f"{diff} / {total}"]
            except Exception as err:
                diff, cells = -1, [f"failed: {first_line(err)}", ""]
            ok &= diff == 0
        rows.append([kernel, *cells])
        plan.log(f"cached vs uncached ({kernel}): {' '.join(cells)}")
    del model
    _free(plan.device)
    return (f"## 2. Cached == uncached sampling (fp32)\n\nFMT-{plan.size}, random weights x3, random order, K = 16 "
            f"random intervals, 4 labels, per-image seeds\n\n"
            f"{markdown_table(['uncached kernel', 'tokens equal', 'differing tokens'], rows)}"), ok


# --- 3. sampling speed ---

def sampling_seconds(plan: Plan, model, order: str, k: int) -> float:
    """Seconds per image of cached sampling in ``k`` uniform steps at batch ``plan.batch``."""
    labels, kwargs = Sampler(order, "uniform", k, seed=0).request(model, torch.arange(plan.batch),
                                                                  plan.dims["num_classes"], plan.device)

    def call():
        generate(model, labels, **kwargs)
        _sync(plan.device)

    with torch.autocast(plan.device.type, dtype=torch.bfloat16) if plan.sample_bf16 else nullcontext():
        return timed(call, plan.repeats) / plan.batch


def speed_table(plan: Plan) -> str:
    n, s = plan.num_tokens, plan.size
    runs = [(f"FMT-{s}", s, "random", [*(k for k in (16, 64) if k < n), n]), (f"GPT-{s}", f"gpt-{s}", "raster", [n])]
    rows, sec = [], {}
    for label, name, order, ks in runs:
        model = None
        for k in ks:
            cell = SKIPPED
            if plan.time_left() > 0:
                try:
                    model = _build(plan, name).eval() if model is None else model
                    sec[label, k] = sampling_seconds(plan, model, order, k)
                    cell = f"{sec[label, k]:.5f}"
                except Exception as err:
                    cell = f"failed: {first_line(err)}"
            rows.append([label, k, cell])
            plan.log(f"sampling {label} K={k}: {cell} s/image")
        del model
        _free(plan.device)
    fmt, gpt = sec.get((f"FMT-{s}", n)), sec.get((f"GPT-{s}", n))
    ratio = f"{fmt / gpt:.2f}x (above 1: the FMT is slower)" if fmt and gpt else "n/a"
    precision = "bf16 autocast" if plan.sample_bf16 else "fp32"
    return (f"## 3. Sampling speed (seconds per image)\n\nKV cache, {precision}, batch {plan.batch}, uniform "
            f"intervals (K = {n}: one token per step), median of {plan.repeats} after a warm-up\n\n"
            f"{markdown_table(['model', 'K', 's/image'], rows)}\n\nFMT / GPT at K = {n}: {ratio}")


# --- 4. DDP ---

def ddp_check(plan: Plan) -> tuple[str, bool]:
    """Ten training steps of the smoke config on 2 GPUs in a subprocess: ``(cell, passed)``."""
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return f"skipped ({gpus} GPU)", True
    if plan.time_left() <= 0:
        return SKIPPED, True
    with tempfile.TemporaryDirectory() as root:
        cmd = [sys.executable, "-m", "sar_lightning", "train", "experiments/smoke.yaml", f"root={root}", *DDP_ARGS]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # its own group: a timeout ends both ranks
        try:
            _, err = proc.communicate(timeout=max(90.0, plan.time_left()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return f"fail: timed out after {time.perf_counter() - start:.0f} s", False
        secs = time.perf_counter() - start
        done = [json.loads(p.read_text()) for p in Path(root).glob("*/done.json")]
        if proc.returncode == 0 and done and done[0].get("global_step") == 10:
            return f"pass ({secs:.0f} s)", True
        tail = err.strip().splitlines()[-1][:200] if err.strip() else "no output"
        return f"fail (exit {proc.returncode}, {secs:.0f} s): {tail}", False


def run_checks(plan: Plan) -> tuple[str, bool]:
    """Every section under ``plan``'s budget: ``(Markdown, all correctness checks passed)``."""
    train = training_cells(plan, compiled=False)
    agreement, agree_ok = agreement_table(plan)
    speed = speed_table(plan)
    ddp, ddp_ok = ddp_check(plan)
    plan.log(f"DDP: {ddp}")
    train |= training_cells(plan, compiled=True)  # the slowest cells last: they get what the budget leaves
    where = torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda" else str(plan.device)
    head = (f"# gpu-check\n\n{where}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
            f"{time.strftime('%Y-%m-%d %H:%M')}, {time.monotonic() - plan.start:.0f} s")
    sections = [head, training_table(plan, train), agreement, speed,
                f"## 4. DDP (2 GPUs, experiments/smoke.yaml, 10 steps)\n\n{markdown_table(['DDP run'], [[ddp]])}"]
    return "\n\n".join(sections), agree_ok and ddp_ok


SIZES = ("B", "L", "XL")


@dataclass
class GPUCheckArgs:
    """``python -m sar_lightning gpu-check`` keys."""

    steps: int = 30  # timed training steps per cell
    batch: int = 32  # training and sampling batch
    out: str = "runs/gpu_check.md"  # the tables also go here
    budget: float = 270.0  # seconds; later cells are skipped
    size: str = "B"  # FMT-<size> and GPT-<size>: B | L | XL
    sample_bf16: bool = False  # time sampling under bf16 autocast (default fp32)


def gpu_check_command(args: GPUCheckArgs) -> int:
    """Run the checks and write the tables to ``args.out``: 1 when a correctness check failed, else 0."""
    if args.size not in SIZES:
        raise ConfigError(f"size={args.size!r} is not valid; choose one of: {', '.join(SIZES)}")
    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    plan = Plan(torch.device("cuda"), size=args.size, batch=args.batch, steps=args.steps,
                sample_bf16=args.sample_bf16, budget_s=args.budget)
    text, ok = run_checks(plan)
    print(text)
    atomic_write_text(args.out, text + "\n")
    print(f"\ngpu-check: wrote {args.out}{'' if ok else '; a correctness check FAILED'}")
    return 0 if ok else 1

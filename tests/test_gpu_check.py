"""The GPU check's CPU-testable parts: each section's function on the tiny models, the tables, the time
budget, a compile failure as a cell, the written file and the no-CUDA exit."""

from __future__ import annotations

import math

import pytest
import torch

from sar_lightning.cli import main as cli
from sar_lightning.core.attention import current_kernel
from sar_lightning.speed import gpu_check
from sar_lightning.speed.gpu_check import KERNELS, NO_CUDA, SKIPPED, Plan, run_checks

SMALL = dict(vocab_size=64, num_classes=10, height=8, width=8)  # N = 64


def plan(**overrides) -> Plan:
    kw = dict(size="tiny", dims=dict(SMALL), batch=2, steps=2, warmup=1, repeats=1) | overrides
    return Plan(torch.device("cpu"), **kw)


def test_without_cuda_it_prints_one_line_and_exits_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "run_checks", lambda p: pytest.fail("no check may run without CUDA"))
    assert cli(["gpu-check", f"out={tmp_path / 'gpu.md'}"]) == 0
    assert capsys.readouterr().out.splitlines() == [NO_CUDA]
    assert not (tmp_path / "gpu.md").exists()


def test_main_prints_and_writes_the_tables_and_reports_failure(monkeypatch, capsys, tmp_path):
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "run_checks", lambda p: (seen.append(p), ("| a |\n| --- |", False))[1])
    out = tmp_path / "sub" / "gpu.md"
    assert cli(["gpu-check", f"out={out}", "steps=5", "batch=8"]) == 1  # a correctness check failed
    assert out.read_text() == "| a |\n| --- |\n"
    assert "| a |" in capsys.readouterr().out
    assert (seen[0].steps, seen[0].batch, seen[0].size, seen[0].device.type) == (5, 8, "B", "cuda")


def test_markdown_table():
    assert gpu_check.markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n| --- | --- |\n| 1 | x |"


@pytest.mark.parametrize("kernel", KERNELS)
def test_training_throughput_of_every_setup_on_cpu(kernel):
    p = plan()
    assert [s[0] for s in p.setups()] == ["FMT-tiny random-16-random", "FMT-tiny raster-64-ar", "GPT-tiny raster"]
    for _, name, order, schedule, k in p.setups():
        rate, graphs = gpu_check.train_throughput(p, name, order, schedule, k, kernel, compiled=False)
        assert math.isfinite(rate) and rate > 0 and graphs == 0  # nothing compiles eagerly on the CPU
    assert current_kernel() == "auto"  # restored


def test_a_compile_failure_is_a_cell_not_a_crash(monkeypatch):
    def compile_that_fails_on_first_call(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("inductor: no C++ compiler\nlong traceback")
        return run

    p = plan()
    monkeypatch.setattr(torch, "compile", compile_that_fails_on_first_call)
    assert gpu_check.train_cell(p, p.setups()[0], "auto", compiled=True) == "compile failed: inductor: no C++ compiler"
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    assert float(gpu_check.train_cell(p, p.setups()[2], "dense", compiled=True).replace(",", "")) > 0


def test_cached_and_uncached_sampling_agree_on_cpu():
    p = plan()
    model = gpu_check.sharpened(p)
    for kernel in KERNELS:
        assert gpu_check.sampling_agreement(p, model, kernel) == (0, 4 * 64)


def test_sampling_seconds_on_cpu():
    p = plan()
    fmt, gpt = gpu_check._build(p, "tiny").eval(), gpu_check._build(p, "gpt-tiny").eval()
    for model, order, k in ((fmt, "random", 16), (fmt, "random", 64), (gpt, "raster", 64)):
        sec = gpu_check.sampling_seconds(p, model, order, k)
        assert math.isfinite(sec) and 0 < sec < 10


def test_every_section_renders_on_cpu(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # inductor on CPU would take too long here
    text, ok = run_checks(plan(steps=1))
    assert ok and SKIPPED not in text
    for title in ("## 1. Training throughput", "## 2. Cached == uncached", "## 3. Sampling speed", "## 4. DDP"):
        assert title in text
    assert "| setup | dense eager | auto eager | dense compiled | auto compiled |" in text
    train_rows = [line for line in text.splitlines() if line.startswith(("| FMT-tiny r", "| GPT-tiny raster"))]
    assert len(train_rows) == 3 and all(float(c.replace(",", "")) > 0 for r in train_rows for c in r.split("|")[2:-1])
    assert "| dense | yes | 0 / 256 |" in text and "| auto | yes | 0 / 256 |" in text
    assert "| FMT-tiny | 16 |" in text and "| GPT-tiny | 64 |" in text and "FMT / GPT at K = 64: " in text
    assert "FMT / GPT at K = 64: n/a" not in text
    assert "| skipped (0 GPU) |" in text or "| skipped (1 GPU) |" in text


def test_a_spent_budget_skips_every_cell():
    text, ok = run_checks(plan(budget_s=0))
    assert ok
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    body = [r for r in rows if not r.startswith(("| setup", "| uncached", "| model", "| DDP run"))]
    assert body and all(SKIPPED in r or "GPU)" in r for r in body)
    assert "FMT / GPT at K = 64: n/a" in text

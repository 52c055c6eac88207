"""The benchmarks run and report ratios (speed targets are numbers they print, never asserted here)."""

import torch

from sar_lightning.models.registry import build_model
from sar_lightning.speed.bench import (
    flops,
    interleaved,
    matmul_peak,
    measure_ar_end,
    measure_training,
    report_ar_end,
    report_training,
)


def test_ar_end_report_has_the_flop_and_time_ratios():
    rows = measure_ar_end(batch=2, repeats=1, sides=(4,))
    fmt, gpt = rows[0]["small_flops"], rows[0]["gpt-small_flops"]
    assert 1.0 < fmt / gpt < 1.5  # the FMT's cross-attention: about 15% more than a GPT of its width and depth
    text = report_ar_end(rows, 2)
    assert "4x4" in text and "FLOPs FMT/GPT" in text


def test_ar_end_takes_the_width_of_both_models():
    narrow, wide = (measure_ar_end(batch=2, repeats=1, sides=(4,), width=w)[0] for w in (None, 32))
    assert (narrow["width"], wide["width"]) == (96, 32)
    assert wide["small_flops"] < narrow["small_flops"] and wide["gpt-small_flops"] < narrow["gpt-small_flops"]
    assert "width 32, batch 2" in report_ar_end([wide], 2)


def test_ar_end_measures_the_compiled_step_when_asked(monkeypatch):
    import sar_lightning.core.sampling as sampling

    compiled = []
    monkeypatch.setattr(sampling, "compiled_step", lambda model: compiled.append(model) or model.step)  # no Inductor
    rows = measure_ar_end(batch=2, repeats=1, sides=(4,), compile=True)
    assert rows[0]["small_compiled"] > 0 and rows[0]["gpt-small_compiled"] > 0 and len(compiled) >= 2
    assert "the same with the compiled step" in report_ar_end(rows, 2)


def test_ar_end_report_with_the_compiled_step():
    row = {"grid": "8x8", "small_flops": 117.0, "gpt-small_flops": 100.0, "small_forward": 1.0, "small_sample": 6.0,
           "gpt-small_sample": 5.0, "small_compiled": 3.0, "gpt-small_compiled": 2.5}
    lines = report_ar_end([row], 32).splitlines()
    compiled = lines[lines.index("the same with the compiled step (generate(compile=True))") + 3]
    assert compiled.split("|")[3:] == ["        1.20x ", "                3.00x ", "                2.00x"]
    assert "compiled" not in report_ar_end([{k: v for k, v in row.items() if "compiled" not in k}], 32)


def test_flops_count_the_matmuls():
    model = build_model("tiny", vocab_size=5, height=2, width=2)
    x = torch.randn(3, 64)
    assert flops(lambda: model.head(x)) == 2 * 3 * 64 * 5


def test_training_report_has_the_fraction_of_the_matmul_peak():
    peak = matmul_peak(size=128, repeats=1)
    t = measure_training(batch=4, repeats=1)
    assert set(t) == {"raster-64-ar", "random-16-random", "random-2-mar", "gpt-small (raster)"}
    assert all(v["tokens_per_s"] > 0 and 0 < v["flop_per_s"] for v in t.values())
    assert "of peak" in report_training(t, 4, peak)


def test_interleaved_timing_takes_turns():
    """One warm-up call each, then rounds that call every configuration once: drift hits all alike."""
    calls = []
    t = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] * 4 and set(t) == {"a", "b"} and all(v >= 0 for v in t.values())

"""Typed run configuration: YAML files in ``experiments/`` + ``key=value`` overrides -> ``Config``.

A YAML file may list ``defaults:`` (paths relative to the ``experiments/`` folder, without ``.yaml``)
merged first, in order, then its own keys, then the command-line overrides. The merged tree is
checked against the dataclasses below (unknown keys and bad types are rejected by OmegaConf) and
then by ``check_config`` (choices and consistency), before any work starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sar_lightning.core.intervals import SCHEDULES, SELF_SIZED, make_intervals
from sar_lightning.core.masks import DECODER_MODES
from sar_lightning.core.orders import parse_order_name
from sar_lightning.core.sampling import ATTN_MODES, CFG_SCHEDULES
from sar_lightning.data.codes import TOKENIZERS, data_info, known_data
from sar_lightning.models.base import ModelConfig
from sar_lightning.models.registry import MODELS, model_class


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


@dataclass
class DataConfig:
    name: str = "digits"  # an image data set of sar_lightning.data.datasets, or "codes"
    path: str | None = None  # codes: folder written by `python -m sar_lightning tokenize`
    tokenizer: str = "pixel"  # image data sets: pixel | vq (a VQ-VAE checkpoint at tokenizer_path)
    tokenizer_path: str | None = None
    levels: int = 17  # pixel tokenizer: intensity levels = vocabulary size
    split_seed: int = 0
    batch_size: int = 64  # per device
    num_workers: int = 0


# The ModelConfig fields a config sets (the others are the size, which model.name picks, and the data's grid,
# vocabulary and classes).
MODEL_KNOBS = ("decoder_attn", "first_set_loss", "class_dropout", "dropout")


def _model_section() -> type:
    """``ModelSection``: ``name`` (a key of models.registry MODELS), then ``MODEL_KNOBS`` with ModelConfig's
    types and defaults, so each model knob is declared once, in ModelConfig."""
    types, defaults = get_type_hints(ModelConfig), ModelConfig()
    knobs = [(k, types[k], field(default=getattr(defaults, k))) for k in MODEL_KNOBS]
    section = make_dataclass("ModelSection", [("name", str, field(default="tiny")), *knobs])
    section.__module__ = __name__
    return section


ModelSection = _model_section()

LR_SCHEDULES = ("constant", "cosine")  # train.lr_schedule: the LR factor of training.module (after warm-up)
# train.precision: the Lightning precisions runs use (training.train hands it to the Trainer)
PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed", "bf16-true")


@dataclass
class TrainConfig:
    order: str = "random"
    schedule: str = "random"
    # K, the number of sets per image (= sampling steps); null for schedules that size themselves (ar, mar,
    # next_scale). Not to be confused with max_steps, the optimiser steps.
    num_steps: int | None = 16
    num_steps_range: list[int] | None = None  # [lo, hi]: K drawn uniformly per batch (overrides num_steps)
    max_steps: int = 1000
    lr: float = 1e-3
    lr_schedule: str = "constant"  # one of LR_SCHEDULES: constant | cosine (after warm-up)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    weight_decay: float = 0.05  # on matrices only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # 0 disables the EMA
    ema_start_step: int = 0
    # one of PRECISIONS. In bf16, cached and uncached sampling differ in some tokens (docs/method.md section 5);
    # fp32 is exact.
    precision: str = "32"
    compile: bool = False
    val_every: int = 200  # steps
    val_batches: int = 8
    ckpt_every: int = 500  # steps between snapshots (last.ckpt is refreshed at the same cadence)
    log_every: int = 10
    sample_steps: list[int] = field(default_factory=lambda: [1, 4, 16])  # image grids at these K
    seed: int = 0
    # order anneal (RAR): random order with probability 1 until anneal_start, falling linearly to 0 at
    # anneal_end (fractions of max_steps), raster otherwise. Part of the run id only for order anneal.
    anneal_start: float = 0.5
    anneal_end: float = 0.75


@dataclass
class InferConfig:
    orders: list[str] = field(default_factory=list)  # empty: the training order
    schedule: str = "cosine"
    num_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])  # each <= N
    cfg_scale: list[float] = field(default_factory=lambda: [1.0])
    cfg_schedule: str = "constant"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    kv_cache: list[bool] = field(default_factory=lambda: [True])
    attn: str = "causal"  # causal | full (MAR-style: known cells one set, unknown the other)
    num_samples: int = 500
    batch_size: int = 100
    reference: str = "val"  # the real split the metrics compare against
    ckpt: str = "last"  # last | a file name under checkpoints/
    ema: bool = True
    seed: int = 0
    timing_batch: int = 32
    timing_repeats: int = 2  # 0: time the evaluation's own batches (infer.batch_size) instead of extra ones
    bootstrap: int = 200  # resamples of the generated features for the FD's 95% interval (0: none)
    compile: bool = False  # torch.compile the cached sampling step (same tokens; pays for long samplings)
    inception_weights: str | None = None  # torch-fidelity's pt_inception-2015-12-05-6726825d.pth
    reference_stats: str | None = None  # an .npz with mu, sigma (ADM's VIRTUAL_imagenet256_labeled.npz)


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    enable_progress_bar: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    root: str = "runs"  # run folders go to <root>/<run_id>
    threads: int = 0  # torch.set_num_threads when > 0


# Config keys renamed since runs were first written: old -> new. Old config.yaml files and checkpoints
# still load, and run ids hash the old names, so existing run folders keep their ids.
RENAMED_KEYS = {"train.num_sets": "train.num_steps", "train.num_sets_range": "train.num_steps_range"}


def migrate_tree(tree):
    """A config tree (DictConfig or dict) with renamed keys moved to today's names."""
    for old, new in RENAMED_KEYS.items():
        section, old_key = old.split(".")
        new_key = new.split(".")[1]
        part = tree.get(section) if section in tree else None
        if part is not None and old_key in part and new_key not in part:
            part[new_key] = part.pop(old_key)
    return tree


def _experiments_root(path: Path) -> Path:
    for parent in [path.parent, *path.parents]:
        if (parent / "base.yaml").exists():
            return parent
    return path.parent


def _load_tree(path: Path, seen: tuple = ()):
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path in seen:
        raise ConfigError(f"config defaults loop through {path}")
    if not path.read_text().strip():
        raise ConfigError(f"config file {path} is empty: give it `defaults: [...]` and the keys of the run "
                          "(see experiments/smoke.yaml)")
    try:
        tree = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(tree, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not a {type(tree).__name__}")
    tree = migrate_tree(tree)
    defaults = tree.pop("defaults", []) if "defaults" in tree else []
    root, merged = _experiments_root(path), OmegaConf.create()
    for name in defaults:
        merged = OmegaConf.merge(merged, _load_tree(root / f"{name}.yaml", (*seen, path)))
    return OmegaConf.merge(merged, tree)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = (), *,
                defaults: list[str] | tuple = (), experiments: str | Path | None = None, check: bool = True) -> Config:
    """Merge ``defaults`` (names under ``experiments/``), ``path`` (with its own defaults) and
    ``key=value`` overrides onto the schema, in that order; validate (types always; with ``check`` also
    choices, consistency and that the data is there, which reading an archived run's config skips)."""
    try:
        tree = OmegaConf.structured(Config)
        for name in defaults:
            tree = OmegaConf.merge(tree, _load_tree(Path(experiments) / f"{name}.yaml"))
        if path is not None:
            tree = OmegaConf.merge(tree, _load_tree(Path(path)))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        tree = OmegaConf.merge(tree, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(tree)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"bad config value{f' at {key!r}' if key else ''}: {err.msg}") from None
    if check:
        check_config(cfg)
    return cfg


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def _choice(key: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, valid))}")


def check_config(cfg: Config) -> None:
    """Choices and consistency the types cannot express. Raises ``ConfigError`` naming the key."""
    _check_choices(cfg)
    _check_ranges(cfg)
    _check_against_data(cfg)


def _check_choices(cfg: Config) -> None:
    """Every named choice is one its registry holds."""
    _choice("data.name", cfg.data.name, known_data())
    _choice("data.tokenizer", cfg.data.tokenizer, TOKENIZERS)
    _choice("model.name", cfg.model.name, list(MODELS))
    _choice("model.decoder_attn", cfg.model.decoder_attn, DECODER_MODES)
    _choice("train.schedule", cfg.train.schedule, sorted(SCHEDULES))
    _choice("train.lr_schedule", cfg.train.lr_schedule, LR_SCHEDULES)
    _choice("train.precision", cfg.train.precision, PRECISIONS)
    _choice("infer.schedule", cfg.infer.schedule, sorted(SCHEDULES))
    _choice("infer.cfg_schedule", cfg.infer.cfg_schedule, CFG_SCHEDULES)
    _choice("infer.attn", cfg.infer.attn, ATTN_MODES)
    for key, name in [("train.order", cfg.train.order)] + [("infer.orders", o) for o in cfg.infer.orders]:
        try:
            parse_order_name(name)
        except ValueError as err:
            raise ConfigError(f"{key}: {err}") from None
    if cfg.data.tokenizer == "vq" and not cfg.data.tokenizer_path:
        raise ConfigError("data.tokenizer=vq needs data.tokenizer_path (a VQ-VAE checkpoint)")


def _check_ranges(cfg: Config) -> None:
    """Every number lies in its range; lists that need values have them."""
    d, t, inf = cfg.data, cfg.train, cfg.infer
    at_least = {"data.batch_size": (d.batch_size, 1), "train.max_steps": (t.max_steps, 1),
                "train.val_every": (t.val_every, 1), "train.ckpt_every": (t.ckpt_every, 1),
                "train.log_every": (t.log_every, 1), "infer.num_samples": (inf.num_samples, 1),
                "infer.batch_size": (inf.batch_size, 1), "trainer.num_nodes": (cfg.trainer.num_nodes, 1),
                "train.warmup_steps": (t.warmup_steps, 0), "train.weight_decay": (t.weight_decay, 0),
                "train.ema_start_step": (t.ema_start_step, 0), "train.grad_clip": (t.grad_clip, 0),
                "train.seed": (t.seed, 0), "train.val_batches": (t.val_batches, 1),
                "data.num_workers": (d.num_workers, 0), "infer.temperature": (inf.temperature, 0),
                "infer.seed": (inf.seed, 0), "infer.timing_batch": (inf.timing_batch, 1),
                "infer.timing_repeats": (inf.timing_repeats, 0), "infer.bootstrap": (inf.bootstrap, 0)}
    for key, (value, least) in at_least.items():
        if not value >= least:
            raise ConfigError(f"{key} must be >= {least}, got {value}")
    if not inf.cfg_scale or any(not w >= 0 for w in inf.cfg_scale):
        raise ConfigError(f"infer.cfg_scale: guidance scales must be >= 0 (1 = no guidance), got {inf.cfg_scale}")
    for key, values in [("infer.num_steps", inf.num_steps), ("infer.kv_cache", inf.kv_cache)]:
        if not values:
            raise ConfigError(f"{key} is empty: give at least one value")
    if inf.top_k is not None and inf.top_k < 1:
        raise ConfigError(f"infer.top_k must be >= 1 or null, got {inf.top_k}")
    if inf.top_p is not None and not 0 < inf.top_p <= 1:
        raise ConfigError(f"infer.top_p must lie in (0, 1] or be null, got {inf.top_p}")
    if not inf.ckpt.strip():
        raise ConfigError("infer.ckpt is empty: use last or a file name under checkpoints/")
    if not 0 <= t.anneal_start <= t.anneal_end <= 1:
        raise ConfigError(f"train.anneal_start and train.anneal_end must satisfy 0 <= start <= end <= 1, got "
                          f"{t.anneal_start} and {t.anneal_end}")
    if not 0 <= t.min_lr_ratio <= 1:
        raise ConfigError(f"train.min_lr_ratio must lie in [0, 1], got {t.min_lr_ratio}")
    if not t.lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {t.lr}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must lie in [0, 1), got {t.ema_decay}")
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas needs two values, got {t.betas}")


def _check_against_data(cfg: Config) -> None:
    """Step counts, the training schedule and the model fit the data's grid of N cells."""
    try:
        info = data_info(cfg.data)  # cheap: constants or the codes manifest
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"data: {err}") from None
    n = info["height"] * info["width"]
    for key, steps in [("train.sample_steps", cfg.train.sample_steps), ("infer.num_steps", cfg.infer.num_steps)]:
        bad = [k for k in steps if not 1 <= k <= n]
        if bad:
            raise ConfigError(f"{key}: step counts {bad} must lie in 1..N={n}")
    rng = cfg.train.num_steps_range
    if rng is not None and (len(rng) != 2 or not 1 <= rng[0] <= rng[1] <= n):
        raise ConfigError(f"train.num_steps_range must be [lo, hi] with 1 <= lo <= hi <= N={n}, got {rng}")
    ks = [None] if cfg.train.schedule in SELF_SIZED else [rng[0], rng[1]] if rng else [cfg.train.num_steps]
    for k in ks:
        try:
            make_intervals(cfg.train.schedule, n, k)
        except ValueError as err:
            raise ConfigError(f"train.schedule/num_steps: {err}") from None
    refusal = model_class(cfg.model.name).training_refusal(cfg.train.order, cfg.train.schedule)
    if refusal:
        raise ConfigError(f"model.name={cfg.model.name}: {refusal}")


def num_steps_label(cfg: Config, num_tokens: int) -> str:
    """The K in a paper-style run name: N for ar, 2 for mar, 'lo_hi' for a range."""
    t = cfg.train
    if t.num_steps_range is not None:
        return f"{t.num_steps_range[0]}_{t.num_steps_range[1]}"
    if t.schedule == "ar":
        return str(num_tokens)
    if t.schedule == "mar":
        return "2"
    if t.schedule == "next_scale":
        return str(len(make_intervals("next_scale", num_tokens)))
    return str(t.num_steps)


_NOT_IDENTITY = {"root", "infer", "trainer", "threads"}


def run_identity(cfg: Config) -> dict:
    """Every setting that changes what is trained (not evaluation, logging cadence, hardware or paths),
    under the key names the first runs were written with: the run id hashes this."""
    ident = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IDENTITY}
    for k in ("log_every", "val_batches", "sample_steps"):
        ident["train"].pop(k, None)
    if cfg.train.order != "anneal":
        for k in ("anneal_start", "anneal_end"):
            ident["train"].pop(k, None)
    if cfg.train.schedule in SELF_SIZED:  # these schedules size themselves: K is not a setting
        ident["train"]["num_steps"] = None
    for old, new in RENAMED_KEYS.items():
        (section, old_key), new_key = old.split("."), new.split(".")[1]
        ident[section][old_key] = ident[section].pop(new_key)
    ident["data"].pop("num_workers", None)
    return ident


def recipe_id(cfg: Config, run: str | None = None) -> str:
    """The run id without its seed: ``{order}-{K}-{schedule}_{model}_{data}_{hash}``, the hash over
    ``run_identity`` less ``train.seed``. A run's training-seed replicas share it. Given the run's id
    (its folder name), the name part is taken from it, so the data need not be on this machine (a fresh
    clone reading the results archive has no codes folder to count N from)."""
    ident = run_identity(cfg)
    ident["train"].pop("seed", None)
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:6]
    return (run or run_id(cfg)).rsplit("_s", 1)[0] + f"_{digest}"


def run_id(cfg: Config) -> str:
    """``{order}-{K}-{schedule}_{model}_{data}_s{seed}_{hash}``: semantic, never from the clock; the hash
    covers ``run_identity``."""
    info = data_info(cfg.data)
    digest = hashlib.sha1(json.dumps(run_identity(cfg), sort_keys=True).encode()).hexdigest()[:6]
    order = cfg.train.order.replace(":", "")
    k = num_steps_label(cfg, info["height"] * info["width"])
    data = cfg.data.name if cfg.data.name != "codes" else Path(cfg.data.path or "codes").name
    return f"{order}-{k}-{cfg.train.schedule}_{cfg.model.name}_{data}_s{cfg.train.seed}_{digest}"

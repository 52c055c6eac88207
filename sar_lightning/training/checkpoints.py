"""Loading a trained run's model from its Lightning checkpoint (safely: weights only)."""

from __future__ import annotations

from pathlib import Path

from sar_lightning.files import FileError
from sar_lightning.runs import RunDir
from sar_lightning.training.module import SARLightningModule


def load_model(run_dir: str | Path, ckpt: str = "last", ema: bool = True):
    """The run's model in eval mode, with EMA weights (``ema=True``, when the run kept them) or raw ones.

    Returns ``(model, info, global_step, used_ema)``; ``info`` is the data's grid, vocabulary, classes.
    """
    run = RunDir(run_dir)
    path = run.checkpoint(ckpt)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found; train the run first "
                                f"(python -m sar_lightning train {run.config})")
    state = run.check_checkpoint(path)
    if not {"hyper_parameters", "state_dict", "global_step"} <= set(state):
        raise FileError(f"{path} is not a checkpoint of this suite (no hyper_parameters / state_dict)")
    module = SARLightningModule(**state["hyper_parameters"])
    has_ema = "current_model_state" in state  # Lightning's EMA callback stores raw weights there
    module.load_state_dict(state["state_dict"] if (ema or not has_ema) else state["current_model_state"])
    return module.model.eval(), state["hyper_parameters"]["info"], state["global_step"], ema and has_ema

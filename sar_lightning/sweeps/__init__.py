"""Sweeps: a grid file expanded into runs, scheduled on cores (or submitit / SLURM), run as child processes
with a progress display and a manifest, and the results archive that merges sweeps across machines.
"""

from sar_lightning.sweeps.sweep import expand, load_grid

__all__ = ["expand", "load_grid"]

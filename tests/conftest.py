"""Test-session settings: one intra-op thread. The models here are tiny, so extra threads only add
overhead, and tests that start subprocesses (DDP, kill-and-resume) would otherwise oversubscribe."""

import torch

torch.set_num_threads(1)

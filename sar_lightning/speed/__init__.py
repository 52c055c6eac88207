"""Speed checks: ``bench`` (sampling and training throughput on this machine, as ratios) and ``gpu_check``
(the CUDA path, in under five minutes). They import the method and the models, nothing that writes runs.
"""

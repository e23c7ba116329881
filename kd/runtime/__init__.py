"""How a stage runs: torch.distributed sessions, devices and threads.

Imports nothing from training."""

"""Training: the one loop (loop), its batches, checkpoints and callbacks, the shared
train/evaluate/write block (runner), and the jobs of the training stages (supervised, distill)."""

"""Distillation as pure functions: Hinton's loss and the rules that combine members' logits."""

"""The accelerate training loop and what it needs: EMA, LR schedule, checkpoints, logging."""

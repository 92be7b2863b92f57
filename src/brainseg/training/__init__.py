"""Training: the trainer loop, checkpoints, history and (optional) distributed helpers."""

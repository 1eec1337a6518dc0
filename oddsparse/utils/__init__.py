"""Low-level utilities shared by every layer (atomic files, checkpoints)."""

"""Low-level utilities shared by every layer (atomic files, checkpoints, figures, the error for bad input)."""

"""Per-task code: how a batch becomes a loss and how a model is evaluated (no training loop)."""

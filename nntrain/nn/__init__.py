"""The network engine: layers, the model, losses, optimizers and schedules (imports nothing above it)."""

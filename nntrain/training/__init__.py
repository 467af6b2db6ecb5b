"""Training: the loop, its callbacks, checkpoints, the run folder, evaluation and curves."""

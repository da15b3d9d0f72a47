"""The training recipe: builders, the loop, one optimisation step, loss, optimiser, EMA, when to save checkpoints."""

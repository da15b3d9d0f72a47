"""Hyperparameter evolution (``train.py --evolve``): a genetic search where each generation is a training."""

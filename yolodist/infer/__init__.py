"""Inference on any exported or trained model: backends, input sources, drawing."""

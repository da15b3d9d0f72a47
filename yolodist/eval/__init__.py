"""Measuring: validation over (sharded) data and detection metrics."""

"""Command-line entry points (argparse only; nothing imports this package)."""

"""Small, named helpers shared across the package."""

"""Typed, validated settings."""

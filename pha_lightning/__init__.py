"""pha-lightning: Prototype-based HyperAdapter (PHA) multi-task tuning of frozen transformers."""

__version__ = "0.1.0"

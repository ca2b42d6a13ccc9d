"""pha-lightning: Prototype-based HyperAdapter (PHA) multi-task tuning of frozen transformers."""

__version__ = "0.1.0"

__all__ = ["PHAModel", "__version__"]


def __getattr__(name: str):  # PEP 562: `from pha_lightning import PHAModel` without importing torch eagerly
    if name == "PHAModel":
        from pha_lightning.export import PHAModel

        return PHAModel
    raise AttributeError(f"module 'pha_lightning' has no attribute {name!r}")

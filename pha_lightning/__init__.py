"""pha-lightning: Prototype-based HyperAdapter (PHA) multi-task tuning of frozen transformers.

Packages, with dependencies pointing one way (checked by tests/test_layout.py):
:mod:`pha_lightning.data` (tasks, datasets, batching) ← :mod:`pha_lightning.formats` (checkpoints,
bundles, migration, peft and AdapterHub files, on plain state) ← :mod:`pha_lightning.model` (the
plain PyTorch model) ← :mod:`pha_lightning.training` (the Lightning system, losses, metrics,
callbacks, transfer) ← :mod:`pha_lightning.cli` (the ``pha`` command). ``errors``, ``validation``, ``files``, ``hub``
(finding a backbone) and ``version`` are shared by all.
"""

from pha_lightning.version import __version__

__all__ = ["PHAConfig", "PHAModel", "__version__"]


def __getattr__(name: str):  # PEP 562: `from pha_lightning import PHAModel` without importing torch eagerly
    if name in ("PHAModel", "PHAConfig"):
        from pha_lightning import model

        return getattr(model, name)
    raise AttributeError(f"module 'pha_lightning' has no attribute {name!r}")

"""Training a :class:`~pha_lightning.model.PHAModel` with Lightning.

The system (``system.py``: ``PHAModule``, the ``LightningModule``) holds a model and what
training needs: the losses (``losses.py``), per-task metrics (``metrics.py``), the optimiser and
schedule, and the checkpoint format (``checkpoints.py``); few-shot transfer to new tasks
(``transfer.py``); callbacks (``callbacks/``, one a module) and the training-health measures they log
(``health.py``, docs/training_health.md).
"""

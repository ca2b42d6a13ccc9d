"""Tasks and data: independent of the model.

The task registry with every task's label space, metrics and text formats (``tasks.py``); GLUE
and SuperGLUE from the hub or local files (``glue.py``); the offline synthetic suite
(``synthetic.py``); raw prediction examples and the batch collator (``examples.py``); the
temperature-sampled multi-task batch sampler (``sampling.py``) with its exact-resume state
(``resume.py``); and the ``LightningDataModule`` that serves them (``datamodule.py``).
docs/data.md describes the datasets, splits and metrics.
"""

"""Tasks and data: independent of the model.

One task schema for every task (``schema.py``: ``TaskSpec``); the built-in GLUE/SuperGLUE tasks
as spec files shipped in the package (``builtin/*.yaml``); the catalogue that owns the registry
and that every command asks for tasks (``catalog.py``); the task abstraction (``tasks.py``);
readers of files and the hub (``readers.py``); the benchmarks' official split protocol
(``benchmark.py``) and the tasks that need code (``kinds.py``); users' tasks with carved splits
(``spec_task.py``); the offline synthetic suite (``synthetic.py``); raw prediction examples and
the batch collator (``examples.py``); the temperature-sampled multi-task batch sampler
(``sampling.py``) with its exact-resume state (``resume.py``); the tokenised-data cache: its key,
verified Arrow files and tokenising in processes (``token_cache.py``); and the
``LightningDataModule`` that serves them (``datamodule.py``). docs/data.md describes the datasets, splits and metrics.
"""

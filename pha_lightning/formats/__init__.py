"""Every file format pha-lightning reads or writes besides its configs, on plain state and files.

One module per format, each with its own entry point:

* ``checkpoint.py``: :func:`~pha_lightning.formats.checkpoint.read_checkpoint`, the one reader of
  ``pha fit`` checkpoints (no unpickling; upgraded; a transfer checkpoint as the model it serves);
* ``bundle.py``: the bundle of ``PHAModel.save_pretrained`` / ``from_pretrained``
  (:func:`~pha_lightning.formats.bundle.write_bundle`, :func:`~pha_lightning.formats.bundle.read_bundle_config`);
* ``migration.py``: the one place that upgrades checkpoints, bundles and configs of earlier versions;
* ``peft.py`` and ``adapterhub.py``: per-task peft LoRA adapters (and merged checkpoints) and
  AdapterHub parallel bottleneck adapters, written from what a model hands over as plain tensors;
* ``state.py``: the checks every reader applies to saved weights (they fit, they are complete).

These modules import no model code and no Lightning: the model (``PHAModel``) turns itself into
plain state dicts and back, the training side decides whether a checkpoint fits a configuration
(:mod:`pha_lightning.training.checkpoints`). docs/design.md says why.
"""

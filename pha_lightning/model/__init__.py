"""The PHA model in plain PyTorch: no Lightning here.

:class:`PHAModel` (``pha.py``) composes the parts of this package from a :class:`PHAConfig`
(``config.py``, the architecture alone): the backbone wiring (``backbone.py``), bottleneck adapters
(``adapters.py``) and LoRA (``lora.py``), the retriever, the prototype table, the hypernetwork,
the output heads, length-aware chunked execution (``chunking.py``) and the method layouts of PHA
and its baselines (``methods.py``); ``seq2seq.py`` decodes T5 (generation, rank classification)
and ``prediction.py`` predicts raw examples; these are called by ``pha.py`` and take the model as
a plain ``nn.Module``, importing nothing of it (no import circles: tests/test_layout.py).
``PHAModel`` saves and loads bundles through :mod:`pha_lightning.formats.bundle`, handing it plain
state dicts, and ``exports.py`` hands each task's adapter weights and head to the peft and
AdapterHub formats (:mod:`pha_lightning.formats`). It depends on :mod:`pha_lightning.data` only for
task definitions and for encoding raw examples.
"""

from pha_lightning.model.config import PHAConfig
from pha_lightning.model.pha import PHAModel

__all__ = ["PHAConfig", "PHAModel"]

"""The ``pha`` command: LightningCLI's ``fit``/``validate``/``test``/``predict`` over the training
system and the data module (``app.py``), plus ``pha export`` (a checkpoint's portable bundle,
``export.py``), ``pha retrieve`` (which trained tasks new tasks resemble, ``retrieve.py``) and
``pha tasks`` (the tasks there are, and a configuration's tasks checked and described, ``tasks.py``).
Only wiring: everything it runs lives in :mod:`pha_lightning.training`, :mod:`pha_lightning.model`
and :mod:`pha_lightning.data`. The entry point (``entry.py``) imports none of them: each command
imports what it needs, and ``pha <command> --help`` is cached (``help_cache.py``).
"""

from pha_lightning.cli.entry import main

__all__ = ["main"]

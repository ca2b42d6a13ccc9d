"""What ``pha`` does not show: library messages its user cannot act on.

The rule (docs/production.md, "What a run prints"): ``pha`` shows what concerns the user's run,
data, settings and files, from pha or from a library; it hides what a library says about itself —
advertisements (Lightning's "💡 Tip" lines for its cloud services), deprecations inside the
libraries (torch, Lightning, transformers warn each other), and Lightning's ``log_every_n_steps``
warning, which compares the logging interval with one epoch although Lightning logs by global step.
``python -W`` or ``PYTHONWARNINGS`` given by the user still decides warnings.
"""

from __future__ import annotations

import logging
import sys
import warnings

#: Lightning's logger of ``rank_zero_info`` messages
LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"
#: how Lightning's advertisements start
ADVERTISEMENT = "💡 Tip:"
#: Lightning's warning that an epoch has fewer batches than ``log_every_n_steps``
LOG_INTERVAL_WARNING = r"The number of training batches \(\d+\) is smaller than the logging interval"
#: Lightning's warning that a streamed prediction loader has no sampler to record batch indices from:
#: ``pha predict``'s rows carry their own ``index``
BATCH_INDICES_WARNING = r"Couldn't infer the batch indices fetched from your dataloader"


class DropAdvertisements(logging.Filter):
    """Drops Lightning's advertisements for its services."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTISEMENT)


def hide_library_noise() -> None:
    """Install the filters of the rule above, for this process (the ``pha`` command, not the Python API)."""
    logger = logging.getLogger(LIGHTNING_INFO_LOGGER)
    if not any(isinstance(known, DropAdvertisements) for known in logger.filters):  # once, however often pha runs
        logger.addFilter(DropAdvertisements())
    if sys.warnoptions:  # the user chose which warnings to see
        return
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!pha_lightning\b)")
    warnings.filterwarnings("ignore", message=LOG_INTERVAL_WARNING)
    warnings.filterwarnings("ignore", message=BATCH_INDICES_WARNING)

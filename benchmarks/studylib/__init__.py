"""The benchmarks' shared library: what every study script needs, in one place.

* :mod:`studylib.runs` — launching ``pha`` commands, the git commit, a run's best checkpoint, an
  older commit's tree;
* :mod:`studylib.records` — resumable JSON Lines records (a row per finished run);
* :mod:`studylib.portable` — committed results name no machine's paths;
* :mod:`studylib.reports` — markdown tables and the report files;
* :mod:`studylib.timing` — CPU time, peak memory, load average;
* :mod:`studylib.study` — study configs (base config, methods, sizes, seeds, rates, protocol);
* :mod:`studylib.grid_report` — a grid's report: per-task means, paired differences, screening, plot;
* :mod:`studylib.routing` — the routing studies' test draw and calibrated precision and coverage
  (imports ``pha_lightning``);
* :mod:`studylib.transfer` — the models and data of one few-shot transfer run (imports ``pha_lightning``);
* :mod:`studylib.checkpoints` and :mod:`studylib.workloads` — a trained checkpoint with its data,
  and the models and batches the timing benchmarks measure (these two import ``pha_lightning``).

The scripts of ``benchmarks/`` import it as ``studylib`` (their own folder is first on Python's
path when run as ``python benchmarks/<script>.py``); no script imports another script.
"""

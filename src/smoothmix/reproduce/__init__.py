"""``smoothmix reproduce``: run one of the paper's tables end to end and put our numbers
beside the published ones.

An *experiment* is a published table: a dataset and a σ (``mnist-0.50``, ``cifar10-1.00``,
``imagenet-1.00``, ...). Its methods are the rows with a training preset
(``{dataset}-{method}-{sigma}``, see :mod:`smoothmix.training.presets`) and the rows with
published values (``data/published.json``, docs/MATH.md §5); a row needs a preset to be run and
published values to be compared. Adding a row is one entry: a preset of that name, or a
published entry keyed by the method. The rows of a figure (the η figure of ``mnist-1.00``)
run when named.

The full budget is the presets and the published protocol (the full test set, ImageNet
every 100th validation image, n0 = 100, N = 100,000, α = 0.001, declared in
``published.json``). A :class:`Budget` with overrides (epochs, training subset, images per
step, warm-up, MACER deferral, test skip, N, max index) is smaller and is stated in every
output. Output folder::

    OUTDIR/reproduce.json          experiment + budget (a rerun must match it)
    OUTDIR/<method>/               one training folder per method (checkpoint, log.csv)
    OUTDIR/certify_<method>.tsv    one certification file per method (the folder's rows)
    OUTDIR/table.md, curves.png, summary.json

Rerunning the same command continues: finished trainings are skipped, an interrupted one
resumes, certification resumes. A longer row list adds rows.

The package's modules: :mod:`~smoothmix.reproduce.experiments` (the catalogue),
:mod:`~smoothmix.reproduce.budget` (:class:`Budget` and its line),
:mod:`~smoothmix.reproduce.pipeline` (the run) and :mod:`~smoothmix.reproduce.report`
(the tables, curves and summary).
"""

from __future__ import annotations

from smoothmix.reproduce import budget, experiments, pipeline, report
from smoothmix.reproduce.budget import FULL_TARGETS_N, Budget
from smoothmix.reproduce.experiments import (
    ALPHA,
    FULL_N,
    N0,
    Experiment,
    Protocol,
    describe_experiments,
    get_experiment,
    list_experiments,
    published_protocol,
    select_methods,
)
from smoothmix.reproduce.experiments import (
    _published as _published,
)
from smoothmix.reproduce.pipeline import (
    EVAL_IMAGES,
    STATE_NAME,
    TARGETS_NAME,
    TEACHER_DIR,
    TEACHER_SIGMA,
    held_rows,
    reproduce,
)
from smoothmix.reproduce.pipeline import (
    _train_kwargs as _train_kwargs,
)
from smoothmix.reproduce.report import PLOT_NAME, SUMMARY_NAME, TABLE_NAME, write_report
from smoothmix.reproduce.report import _format as _format

__all__ = ["ALPHA", "EVAL_IMAGES", "FULL_N", "FULL_TARGETS_N", "N0", "PLOT_NAME",
           "STATE_NAME", "SUMMARY_NAME", "TABLE_NAME", "TARGETS_NAME", "TEACHER_DIR",
           "TEACHER_SIGMA", "Budget", "Experiment", "Protocol", "budget",
           "describe_experiments", "experiments", "get_experiment", "held_rows",
           "list_experiments", "pipeline", "published_protocol", "report", "reproduce",
           "select_methods", "write_report"]
# _published, _train_kwargs and _format stay importable from here for the tests that used
# them before the split into modules.

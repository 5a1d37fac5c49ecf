"""The tables of an experiment as a whole: its runs and detectors compared (a sweep), an intervention's runs
and effects."""

from __future__ import annotations

import pyarrow as pa

from gradscope.tables._registry import SWEEP_PATHS, described
from gradscope.tables._signals import QUALITY

# The sweep tables' types are inferred when written (their columns follow the grid); these are
# the columns every sweep has, with the types pyarrow infers for them (text: large_string, pandas 3's).
SWEEP_RUNS = {
    "run_id": pa.large_string(),
    "run": pa.large_string(),
    "optimizer": pa.large_string(),
}

SWEEP_DETECTORS = {
    "detector": pa.large_string(),
    "last_step": pa.int64(),
    **QUALITY,
    "best_auroc": pa.float64(),
    "best_step": "int64 or double",
    "run_id": pa.large_string(),
    "run": pa.large_string(),
}

# An intervention experiment's tables (gradscope.interventions). Its runs' table adds a column test_acc_GROUP per
# planted test group; with its nulls (a parent's detector, k and action), its types are inferred.
INTERVENTION_RUNS = {
    "run_id": pa.large_string(),
    "arm": pa.large_string(),
    "detector": pa.large_string(),
    "k": "int64 or double",
    "action": pa.large_string(),
    "seed": pa.int64(),
    "final_test_acc": pa.float64(),
    "worst_group_test_acc": "double or null",
    "generalization_delay_steps": "int64, double or null",
    "n_loss_spikes": pa.int64(),
    "max_sharpness": pa.float64(),
}
EFFECTS = {
    "detector": pa.string(),
    "k": pa.int64(),
    "action": pa.string(),
    "figure": pa.string(),
    "n_seeds": pa.int64(),
    "parent_mean": pa.float64(),
    "flagged_mean": pa.float64(),
    "control_mean": pa.float64(),
    "effect": pa.float64(),
    "effect_sd": pa.float64(),
    "ci_low": pa.float64(),
    "ci_high": pa.float64(),
    "control_sd": pa.float64(),
    "beyond_spread": pa.bool_(),
}


# This module's registry entries, in the registry's order.
ENTRIES = (
    described("sweep_runs", SWEEP_PATHS["runs"], "One row per run of the experiment. Its columns: "
              "run_id, run, then the grid values and seed (one column per parameter the runs vary, types inferred, "
              "list values as text), optimizer, then the headline figures of each run (final accuracies and losses, "
              "generalization steps, sharpness and the edge of stability, flag counts, detector AUROCs where the "
              "data plants truth), and its timeline's (report.TIMELINE_SWEEP: loss spikes, the fraction near a 2/lr "
              "crossing and with the top opposing pair in antiphase with the shuffled baseline, the loss-pair "
              "correlation).",
              SWEEP_RUNS, {
        "run_id": "The run's id (experiment/run).",
        "run": "The run's name (its varying parameters).",
        "optimizer": "The run's optimizer (`optim.name`).",
    }),
    described("sweep_detectors", SWEEP_PATHS["detectors"], "One row per run and detector: the detector's figures at "
              "its last checkpoint and its best AUROC over checkpoints. Types are inferred; the quality columns "
              "(auroc to best_step) are absent where no run's data plants truth.", SWEEP_DETECTORS, {
        "detector": "Detector name.",
        "last_step": "The detector's last checkpoint.",
        "n_flagged": "Examples flagged there.",
        "auroc": "AUROC there (NaN where undefined).",
        "average_precision": "Average precision there.",
        "precision_at_k": "Precision of the k top scores there (k = planted count).",
        "recall_at_k": "Recall of the k top scores there (k = planted count).",
        "precision": "Precision of the flags there.",
        "recall": "Recall of the flags there.",
        "best_auroc": "The best AUROC over checkpoints.",
        "best_step": "The checkpoint of best_auroc (NaN where no checkpoint has one: the column is then double).",
        "run_id": "The run's id (experiment/run).",
        "run": "The run's name.",
    }),
    described("interventions", SWEEP_PATHS["interventions"],
              "An intervention experiment's runs (gradscope.interventions) "
              "and its parent's runs of the same seeds: one row per run with the figures an intervention is judged "
              "by, plus a column test_acc_GROUP per planted test group GROUP.", INTERVENTION_RUNS, {
        "run_id": "The run's id (experiment/run).",
        "arm": "flagged (the detector's top k intervened on), control (k random examples, as many per label) or "
               "parent (the run intervened on).",
        "detector": "intervene.detector (null for the parent).",
        "k": "intervene.k (null for the parent).",
        "action": "intervene.action: remove, downweight or relabel (null for the parent).",
        "seed": "The training seed (the parent's and its arms' are the same).",
        "final_test_acc": "Test accuracy at the last logged step.",
        "worst_group_test_acc": "The lowest test accuracy over the planted test groups at the last checkpoint "
                                "(null without groups).",
        "generalization_delay_steps": "Steps from memorization to generalization (signals.generalization; null "
                                      "where either never happened).",
        "n_loss_spikes": "Loss spikes in the run's timeline (timeline.spike_window, timeline.spike_margin).",
        "max_sharpness": "The largest sharpness over the checkpoints.",
    }),
    described("effects", SWEEP_PATHS["effects"],
              "An intervention experiment's effects: one row per detector, k, action "
              "and figure (those of `interventions`), the flagged arm minus the control arm, paired by seed.", EFFECTS, {
        "detector": "intervene.detector.",
        "k": "intervene.k.",
        "action": "intervene.action.",
        "figure": "The figure compared (a column of `interventions`).",
        "n_seeds": "Seeds with the figure in both arms.",
        "parent_mean": "The parent runs' mean over those seeds.",
        "flagged_mean": "The flagged arm's mean.",
        "control_mean": "The control arm's mean.",
        "effect": "The mean over seeds of flagged minus control.",
        "effect_sd": "The standard deviation of flagged minus control over seeds (NaN with one).",
        "ci_low": "The effect's 95% t interval, low end (NaN with one seed).",
        "ci_high": "The effect's 95% t interval, high end.",
        "control_sd": "The control arm's standard deviation over seeds: the seed-to-seed spread.",
        "beyond_spread": "Whether the effect's size exceeds both effect_sd and control_sd (false with one seed).",
    }),
)

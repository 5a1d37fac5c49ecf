"""The signals stage's tables: the detectors' scores and quality, opposing groups, loss changes, per-example figures."""

from __future__ import annotations

import pyarrow as pa

from gradscope.tables._registry import RUN_PATHS, described

DETECTIONS = {
    "step": pa.int64(),
    "example_id": pa.int64(),
    "detector": pa.string(),
    "score": pa.float64(),
    "flagged": pa.bool_(),
}

# A detector's quality against planted truth: per checkpoint (EVALUATION), per run (SWEEP_DETECTORS).
QUALITY = {
    "n_flagged": pa.int64(),
    "auroc": pa.float64(),
    "average_precision": pa.float64(),
    "precision_at_k": pa.float64(),
    "recall_at_k": pa.float64(),
    "precision": pa.float64(),
    "recall": pa.float64(),
}

EVALUATION = {"detector": pa.string(), "step": pa.int64(), **QUALITY}

GROUPS = {
    "step_from": pa.int64(),
    "step_to": pa.int64(),
    "group": pa.int64(),
    "example_id": pa.int64(),
    "delta_loss": pa.float64(),
}

GROUP_PAIRS = {
    "step_from": pa.int64(),
    "step_to": pa.int64(),
    "group_a": pa.int64(),
    "group_b": pa.int64(),
    "size_a": pa.int64(),
    "size_b": pa.int64(),
    "mean_delta_a": pa.float64(),
    "mean_delta_b": pa.float64(),
    "cosine": pa.float64(),
    "opposing": pa.bool_(),
}

GROUP_LOSSES = {
    "step_from": pa.int64(),
    "step_to": pa.int64(),
    "group": pa.int64(),
    "step": pa.int64(),
    "mean_loss": pa.float64(),
}

LOSS_CHANGES = {
    "step_from": pa.int64(),
    "step_to": pa.int64(),
    "example_id": pa.int64(),
    "delta_loss": pa.float64(),
}

PER_EXAMPLE = {
    "example_id": pa.int64(),
    "confidence": pa.float64(),
    "variability": pa.float64(),
    "correctness": pa.float64(),
    "forgetting_events": pa.int64(),
    "never_learned": pa.bool_(),
    "aum": pa.float64(),
    "opposition": pa.float64(),
    "tracin_self_influence": pa.float64(),
    "final_loss": pa.float64(),
    "final_correct": pa.bool_(),
    "planted": pa.bool_(),
    "planted_group": pa.string(),
}

# This module's registry entries, in the registry's order.
ENTRIES = (
    described("detections", RUN_PATHS["signals_detections"], "Detector scores of the training split. One row per "
              "training example, detector and checkpoint the detector scores (`opposing_groups` from the second "
              "checkpoint, `loss_*` once `window` checkpoints exist).", DETECTIONS, {
        "step": "Checkpoint step.",
        "example_id": "Training example.",
        "detector": "Detector name.",
        "score": "The detector's score: higher = more suspect.",
        "flagged": "Whether the detector flags the example.",
    }),
    described("evaluation", RUN_PATHS["signals_evaluation"],
              "Each detector judged against the planted truth. One row per "
              "detector and checkpoint; the figures auroc to recall are NaN without planted truth.", EVALUATION, {
        "detector": "Detector name.",
        "step": "Checkpoint step.",
        "n_flagged": "Examples flagged.",
        "auroc": "AUROC of the score against the planted truth.",
        "average_precision": "Average precision of the score.",
        "precision_at_k": "Precision of the k top scores (k = planted count).",
        "recall_at_k": "Recall of the k top scores (k = planted count).",
        "precision": "Precision of the flags.",
        "recall": "Recall of the flags.",
    }),
    described("groups", RUN_PATHS["signals_groups"], "Opposing-signal groups. One row per selected example of each "
              "checkpoint interval: the top-k examples by absolute loss change, each with the group its gradient "
              "direction puts it in.",
              GROUPS, {
        "step_from": "The interval's first checkpoint.",
        "step_to": "The interval's last checkpoint.",
        "group": "Group (0 = largest).",
        "example_id": "Training example.",
        "delta_loss": "The example's loss change over the interval.",
    }),
    described("group_pairs", RUN_PATHS["signals_group_pairs"], "One row per pair of groups of each checkpoint "
              "interval.", GROUP_PAIRS, {
        "step_from": "The interval's first checkpoint.",
        "step_to": "The interval's last checkpoint.",
        "group_a": "The first group.",
        "group_b": "The second group.",
        "size_a": "Examples in group_a.",
        "size_b": "Examples in group_b.",
        "mean_delta_a": "Mean loss change of group_a over the interval.",
        "mean_delta_b": "Mean loss change of group_b over the interval.",
        "cosine": "Cosine of the groups' mean projected gradients.",
        "opposing": "Whether the pair opposes (cosine < 0).",
    }),
    described("group_losses", RUN_PATHS["signals_group_losses"], "One row per group of each interval and checkpoint: "
              "each group's mean loss at every checkpoint.", GROUP_LOSSES, {
        "step_from": "The interval's first checkpoint (where the group was found).",
        "step_to": "The interval's last checkpoint.",
        "group": "Group (0 = largest).",
        "step": "The checkpoint of the loss.",
        "mean_loss": "The group's mean loss at that checkpoint.",
    }),
    described("loss_changes", RUN_PATHS["signals_loss_changes"], "One row per training example and checkpoint "
              "interval: the Δloss distribution of every interval.", LOSS_CHANGES, {
        "step_from": "The interval's first checkpoint.",
        "step_to": "The interval's last checkpoint.",
        "example_id": "Training example.",
        "delta_loss": "Its loss change over the interval.",
    }),
    described("per_example", RUN_PATHS["signals_per_example"], "One row per training example over the whole run "
              "(all checkpoints).", PER_EXAMPLE, {
        "example_id": "Training example.",
        "confidence": "Dataset cartography: mean probability of the true label over the checkpoints.",
        "variability": "Dataset cartography: standard deviation of that probability.",
        "correctness": "Dataset cartography: fraction of the checkpoints where the example is correct.",
        "forgetting_events": "Times the example went from correct at one checkpoint to wrong at the next.",
        "never_learned": "Whether the example was never correct.",
        "aum": "Area under the margin: the mean margin over the checkpoints.",
        "opposition": "Mean −cosine to the mean training gradient after step 0 (over the checkpoints after the "
                      "first; all of them where there is one).",
        "tracin_self_influence": "TracIn self-influence: Σ over checkpoints of lr × the squared gradient norm.",
        "final_loss": "Loss at the last checkpoint.",
        "final_correct": "Correct at the last checkpoint.",
        "planted": "Whether the example is planted ground truth.",
        "planted_group": "The planted group's name, empty for none.",
    }),
)

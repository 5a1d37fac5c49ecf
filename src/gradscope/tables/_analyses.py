"""The tables of a run's later stages, each reading the ones before it: the timeline, train-to-test influence,
and the progress measures of the grokking circuit."""

from __future__ import annotations

import pyarrow as pa

from gradscope.tables._registry import RUN_PATHS, described

# The timeline stage (gradscope.timeline): steps are float, as a sharpness crossing is interpolated between checkpoints.
TIMELINE_EVENTS = {
    "kind": pa.string(),
    "step": pa.float64(),
    "step_start": pa.float64(),
    "step_end": pa.float64(),
    "resolution": pa.float64(),
    "value": pa.float64(),
    "group_a": pa.int64(),
    "group_b": pa.int64(),
    "step_from": pa.int64(),
}

TIMELINE_LINKS = {
    "step": pa.float64(),
    "value": pa.float64(),
    "resolution": pa.float64(),
    "window": pa.float64(),
    "nearest_crossing_step": pa.float64(),
    "nearest_crossing_kind": pa.string(),
    "crossing_distance": pa.float64(),
    "near_crossing": pa.bool_(),
    "antiphase_distance": pa.float64(),
    "antiphase_active": pa.bool_(),
}

INFLUENCE_TOP = {  # each scored test example's top proponents and opponents
    "test_id": pa.int64(),
    "test_label": pa.int64(),
    "kind": pa.string(),
    "rank": pa.int64(),
    "train_id": pa.int64(),
    "score": pa.float64(),
    "train_label": pa.int64(),
    "train_clean_label": pa.int64(),
    "train_planted": pa.bool_(),
}

INFLUENCE_CONTRIBUTIONS = {  # those pairs' score, checkpoint by checkpoint
    "test_id": pa.int64(),
    "train_id": pa.int64(),
    "kind": pa.string(),
    "step": pa.int64(),
    "lr": pa.float64(),
    "contribution": pa.float64(),
}

# One row per checkpoint. Lists: key frequencies (1..p//2) and the spectrum (norm of frequency k at index k-1).
PROGRESS = {
    "step": pa.int64(),
    "train_loss": pa.float64(),
    "test_loss": pa.float64(),
    "restricted_loss": pa.float64(),
    "restricted_loss_all": pa.float64(),
    "excluded_loss": pa.float64(),
    "key_frequencies": pa.list_(pa.int64()),
    "key_fraction": pa.float64(),
    "top_frequencies": pa.list_(pa.int64()),
    "top_fraction": pa.float64(),
    "constant_norm": pa.float64(),
    "embedding_norm": pa.float64(),
    "spectrum": pa.list_(pa.float64()),
    "weight_norm": pa.float64(),
    "weight_norm_logged": pa.bool_(),
}

# This module's registry entries, in the registry's order.
ENTRIES = (
    described("timeline_events", RUN_PATHS["timeline_events"], "The run's timeline (gradscope.timeline): one row per "
              "event, sorted by step. Kinds: loss_spike (the training loss above the median of its previous "
              "`timeline.spike_window` logged values by more than `timeline.spike_margin` of it), sharpness_reach and "
              "sharpness_leave (sharpness rising to and falling below 2/lr between two checkpoints; none where 2/lr "
              "does not apply), antiphase (the top pair of opposing groups' loss changes correlated at most "
              "`timeline.antiphase_threshold` over `timeline.antiphase_window` checkpoint intervals), memorization "
              "and generalization (the headline's step_memorized and step_generalized).", TIMELINE_EVENTS, {
        "kind": "loss_spike, sharpness_reach, sharpness_leave, antiphase, memorization or generalization.",
        "step": "Where the event is: a spike's peak; a crossing interpolated linearly between its two checkpoints; "
                "the middle of an antiphase interval; the logged step of memorization or generalization.",
        "step_start": "The event's first step: a spike's first point above its baseline, the checkpoint before a "
                      "crossing, an antiphase interval's first checkpoint, the logged step before memorization or "
                      "generalization.",
        "step_end": "The event's last step: a spike's last point above its baseline, the checkpoint after a "
                    "crossing, an antiphase interval's last checkpoint, the step of memorization or generalization.",
        "resolution": "How well the tables place the event, in steps: the logging interval (spikes), the checkpoint "
                      "gap around it (crossings), the largest checkpoint gap inside it (antiphase), the logging "
                      "interval before it (memorization, generalization).",
        "value": "The event's size: loss / baseline at a spike's peak; sharpness / (2/lr) at the checkpoint after a "
                 "crossing; the mean correlation of the pair's loss changes over an antiphase interval (negative); "
                 "the accuracy reached at memorization (train) or generalization (test).",
        "group_a": "antiphase: the pair's first group (group numbers are its interval's: see step_from); null on "
                   "the other kinds.",
        "group_b": "antiphase: the pair's second group; null on the other kinds.",
        "step_from": "antiphase: the first checkpoint of the interval where the pair was found (signals "
                     "group_pairs); null on the other kinds.",
    }),
    described("timeline_links", RUN_PATHS["timeline_links"], "One row per loss spike of `timeline_events`: its nearest "
              "sharpness crossing and whether the top pair of opposing groups is in antiphase within a window of it. "
              "The counts against the same events shuffled in time are in the stage's summary (layout name "
              "timeline_summary).",
              TIMELINE_LINKS, {
        "step": "The spike's step (its peak).",
        "value": "The spike's loss / baseline at its peak.",
        "resolution": "The coarser of the spike's resolution and its nearest crossing's, in steps: how finely the "
                      "tables can place the two relative to each other.",
        "window": "Steps either side of the spike within which a crossing or an antiphase interval counts as linked: "
                  "`timeline.link_window`, or (null) twice the checkpoint interval the spike lies in.",
        "nearest_crossing_step": "The step of the nearest sharpness crossing (NaN without one).",
        "nearest_crossing_kind": "sharpness_reach or sharpness_leave; null without a crossing.",
        "crossing_distance": "Steps between the spike and its nearest crossing (NaN without one).",
        "near_crossing": "Whether crossing_distance is at most window.",
        "antiphase_distance": "Steps between the spike and the nearest antiphase interval, 0 inside one (NaN "
                              "without one).",
        "antiphase_active": "Whether antiphase_distance is at most window: the pair is in antiphase around the "
                            "spike.",
    }),
    described("influence_top", RUN_PATHS["influence_top"], "Train-to-test TracIn-CP: one row per scored test example, "
              "kind and rank, the training example that ranks there among its proponents or opponents.",
              INFLUENCE_TOP, {
        "test_id": "Test example.",
        "test_label": "Its label.",
        "kind": "proponent or opponent.",
        "rank": "Rank within the kind (1 = strongest).",
        "train_id": "Training example.",
        "score": "TracIn-CP: Σ over checkpoints of lr × the inner product of the two examples' projected gradients.",
        "train_label": "The training example's label (as trained on).",
        "train_clean_label": "The training example's label before any planted flip.",
        "train_planted": "Whether the training example is planted.",
    }),
    described("influence_contributions", RUN_PATHS["influence_contributions"],
              "One row per pair of `influence_top` and "
              "checkpoint: that pair's score, checkpoint by checkpoint.", INFLUENCE_CONTRIBUTIONS, {
        "test_id": "Test example.",
        "train_id": "Training example.",
        "kind": "proponent or opponent.",
        "step": "Checkpoint step.",
        "lr": "The learning rate at that checkpoint.",
        "contribution": "That checkpoint's lr × inner product; the contributions of a pair sum to its score.",
    }),
    described("progress", RUN_PATHS["progress"], "Progress measures of the grokking circuit (Nanda et al. 2023): one "
              "row per checkpoint, modular add/sub runs only.", PROGRESS, {
        "step": "Checkpoint step.",
        "train_loss": "The model's own loss over all pairs of the training split.",
        "test_loss": "The model's own loss over all pairs of the test split.",
        "restricted_loss": "Training-pair loss of the logits restricted to the key frequencies' directions (and the "
                           "constant).",
        "restricted_loss_all": "The restricted loss over all p² pairs.",
        "excluded_loss": "Training-pair loss of the logits with the key frequencies' directions removed.",
        "key_frequencies": "The key frequencies (list) of the restricted and excluded losses.",
        "key_fraction": "Fraction of the embedding's squared norm in the key frequencies.",
        "top_frequencies": "The top frequencies of the embedding's spectrum (list: this checkpoint's own).",
        "top_fraction": "Fraction of the embedding's squared norm in top_frequencies.",
        "constant_norm": "Norm of the embedding's constant component.",
        "embedding_norm": "Norm of the embedding.",
        "spectrum": "The embedding's Fourier spectrum (list: the norm of frequency k at index k − 1).",
        "weight_norm": "Norm of all parameters.",
        "weight_norm_logged": "Whether training logged the step's weight norm (false where it was not, and the norm "
                              "comes from the checkpoint).",
    }),
)

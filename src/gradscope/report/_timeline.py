"""The timeline stage in the reports: a run's section (its events, links and resolution) and the sweep's table."""

from __future__ import annotations

import pandas as pd

from gradscope import layout
from gradscope.report._headline import MISSING, fmt, is_missing, markdown_table

# The timeline stage's figures in the sweep's runs.parquet, one column each (timeline/summary.json's keys).
TIMELINE_SWEEP = ["n_spikes", "n_crossings", "n_antiphase",
                  *(f"{link}{k}" for link in ("spikes_near_crossing", "spikes_with_antiphase")
                    for k in ("", "_fraction", "_expected", "_expected_sd", "_p")),
                  "loss_group_correlation"]


def timeline_figures(summary: dict | None) -> dict:
    """A run's TIMELINE_SWEEP figures from its timeline summary (None where missing)."""
    return {k: (summary or {}).get(k) for k in TIMELINE_SWEEP}


def _steps(v) -> str:
    return f"{fmt(v)} steps" if not is_missing(v) else MISSING


def timeline_links_table(summary: dict) -> pd.DataFrame:
    """The two links of the timeline (spikes near a sharpness crossing, spikes with the pair in antiphase): each
    with its count, fraction, the shuffled baseline (expected ± sd, p) and its resolution."""
    spikes = f"each spike's own step: logging interval {_steps(summary.get('spike_resolution'))}"
    rows = []
    for key, what, resolution in (
            ("spikes_near_crossing", "within the window of a sharpness crossing of 2/lr",
             f"{spikes}; crossings: checkpoint gap, median {_steps(summary.get('crossing_resolution_median'))}, "
             f"largest {_steps(summary.get('crossing_resolution_max'))}"),
            ("spikes_with_antiphase", "within the window of an active antiphase interval",
             f"{spikes}; antiphase: largest checkpoint gap inside one {_steps(summary.get('antiphase_resolution_max'))}")):
        rows.append({"link": what, "spikes": summary.get(key), "of": summary.get("n_spikes"),
                     "fraction": summary.get(f"{key}_fraction"), "expected by chance": summary.get(f"{key}_expected"),
                     "± sd": summary.get(f"{key}_expected_sd"), "p": summary.get(f"{key}_p"),
                     "resolution": resolution})
    return pd.DataFrame(rows)


def timeline_section(summary: dict, figure: str | None, optimizer: str) -> list[str]:
    """The run report's timeline (timeline/summary.json of gradscope.timeline): the events counted, how many loss
    spikes fall within the window of a sharpness crossing and of an active antiphase pair against the same events
    shuffled in time, the resolution of each link, and the correlation of the loss oscillation with the pair's
    loss difference."""
    s, n = summary["settings"], summary.get("n_events") or {}
    pair = summary.get("pair")
    window = (f"{fmt(summary['window'])} steps either side of a spike (timeline.link_window)"
              if summary.get("window") is not None else
              "twice the checkpoint interval a spike lies in, either side of it (timeline.link_window null"
              + (")" if summary.get("window_min") is None else f": {fmt(summary['window_min'])} steps)"
                 if summary["window_min"] == summary.get("window_max") else
                 f": {fmt(summary['window_min'])} to {fmt(summary.get('window_max'))} steps)"))
    span = summary.get("span") or [None, None]
    crossings = (f"{summary['n_crossings']} crossings of 2/lr ({n.get('sharpness_reach', 0)} reaching it, "
                 f"{n.get('sharpness_leave', 0)} leaving it, interpolated between checkpoints)"
                 if summary.get("edge_applies", True) else
                 f"no crossings of 2/lr: it is the stability threshold of gradient descent, not of {optimizer}, so "
                 "the crossing link is empty (0 spikes near a crossing, nothing expected)")
    antiphase = (f"{summary['n_antiphase']} antiphase intervals of the top opposing pair (groups {pair['group_a']} "
                 f"and {pair['group_b']}, found over steps {pair['step_from']}→{pair['step_to']} with gradient cosine "
                 f"{fmt(pair['cosine'])}): their loss changes between checkpoints correlated at most "
                 f"{fmt(s['antiphase_threshold'])} over {s['antiphase_window']} consecutive intervals"
                 if pair else "no antiphase intervals: the signals stage found no opposing pair of groups")
    corr = summary.get("loss_group_correlation")
    correlation = ("Correlation of the training loss's change with the change of the pair's loss difference "
                   f"(group {pair['group_a']} − group {pair['group_b']}) between consecutive checkpoints: "
                   f"r = {fmt(corr)}" if pair else "Correlation of the loss oscillation with a pair's loss difference: "
                   f"{MISSING} (no pair)")
    if pair and is_missing(corr):
        correlation += " (fewer than 3 checkpoint intervals inside the logged steps, or a constant change)"
    return [
        "## Timeline: loss spikes, 2/lr and opposing groups",
        f"Events on one step axis (`{layout.IN_RUN['timeline_events']}`; each spike's links in "
        f"`{layout.IN_RUN['timeline_links']}`): {summary['n_spikes']} loss spikes (the training loss above the median "
        f"of its previous {s['spike_window']} logged values by more than {s['spike_margin']:.0%} of it), {crossings}; "
        f"{antiphase}. Memorized at step {fmt(summary.get('step_memorized'))}, generalized at step "
        f"{fmt(summary.get('step_generalized'))} (– = never; vertical lines in the figure).",
        *([f"![Timeline]({figure})"] if figure else []),
        f"Loss spikes linked to each, against the same events placed uniformly at random over steps "
        f"{fmt(span[0])} to {fmt(span[1])} ({summary['shuffles']} shuffles, seed {summary['seed']}; an antiphase "
        f"interval keeps its length): expected ± sd is the fraction of spikes near them by chance, p the fraction of "
        f"shuffles with at least as many. Window: {window}.",
        markdown_table(timeline_links_table(summary)),
        f"Resolution: {summary['resolution']}",
        correlation + ".",
    ]


def sweep_timeline_lines(runs: pd.DataFrame) -> list[str]:
    """The sweep's timeline table: per run, its loss spikes, the fraction near a crossing of 2/lr and with the
    top pair in antiphase against the shuffled baseline, and the loss-pair correlation (TIMELINE_SWEEP)."""
    if "n_spikes" not in runs:
        return []
    cols = {"run": "run", "n_spikes": "loss spikes", "spikes_near_crossing_fraction": "near a 2/lr crossing",
            "spikes_near_crossing_expected": "expected near a crossing", "spikes_near_crossing_p": "p (crossing)",
            "spikes_with_antiphase_fraction": "with antiphase", "spikes_with_antiphase_expected": "expected with antiphase",
            "spikes_with_antiphase_p": "p (antiphase)", "loss_group_correlation": "loss–pair correlation"}
    table = runs[[c for c in cols if c in runs]].rename(columns=cols)
    return ["## Timeline",
            "Per run (its report's timeline section): the fraction of its loss spikes within the window of a sharpness "
            "crossing of 2/lr and of an active antiphase interval of its top opposing pair, each against the fraction "
            "expected of the same events shuffled in time (p: the fraction of shuffles at least as high); – where a run "
            "has no spikes; the correlation of the training loss's change with the pair's loss difference between "
            f"checkpoints. Counts and the shuffles' sd are in `{layout.IN_SWEEP['runs']}`.",
            markdown_table(table)]


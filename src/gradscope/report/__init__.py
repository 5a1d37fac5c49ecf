"""Markdown reports: one per run, one per sweep, built from a run's artifacts.

`headline` condenses a run into the figures a researcher compares across a sweep: final
accuracies, when train and test accuracy crossed their thresholds (the grokking delay, from
the signals stage's generalization events), sharpness against 2/lr, and detection quality where the data plants ground truth.

One module per part, every name importable from here:

- `gradscope.report._headline`: the headline figures, `fmt` and `markdown_table`;
- `gradscope.report._run`: the run report, with the influence and progress sections;
- `gradscope.report._signals`: the run report's signals section (detectors, opposing groups);
- `gradscope.report._timeline`: the timeline stage's section of the run report and table of the sweep report;
- `gradscope.report._sweep`: the sweep report, with an intervention experiment's effects.
"""

from __future__ import annotations

from gradscope.report._headline import (EDGE_TAIL, EDGE_TOLERANCE, HEADLINE, MISSING, fmt, headline, headline_figures,
                                        markdown_table)
from gradscope.report._run import PROGRESS_ROWS, influence_section, progress_section, render_run_report
from gradscope.report._signals import DETECTOR_TEXT, detector_table, signals_section, top_pairs_text
from gradscope.report._sweep import edge_of_stability_lines, intervention_lines, render_sweep_report
from gradscope.signals import edge_assessed  # decided in signals, where the edge of stability is assessed
from gradscope.report._timeline import (TIMELINE_SWEEP, sweep_timeline_lines, timeline_figures, timeline_links_table,
                                        timeline_section)

__all__ = [
    "DETECTOR_TEXT", "EDGE_TAIL", "EDGE_TOLERANCE", "HEADLINE", "MISSING", "PROGRESS_ROWS", "TIMELINE_SWEEP",
    "detector_table", "edge_assessed", "edge_of_stability_lines", "fmt", "headline", "headline_figures",
    "influence_section", "intervention_lines", "markdown_table", "progress_section", "render_run_report",
    "render_sweep_report", "signals_section", "sweep_timeline_lines", "timeline_figures", "timeline_links_table",
    "timeline_section", "top_pairs_text",
]

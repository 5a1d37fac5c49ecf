"""Snakemake adapter for rule sweep_report: see gradscope.pipeline.write_sweep_report."""
from gradscope.logs import log_to
from gradscope.pipeline import write_sweep_report

with log_to(snakemake.log[0]):
    write_sweep_report(snakemake.wildcards.experiment, snakemake.params.runs, metrics_paths=snakemake.input.metrics,
                       summary_paths=snakemake.input.summaries, curvature_paths=snakemake.input.curvature,
                       plots_settings=snakemake.params.plots, runs_path=snakemake.output.runs,
                       detectors_path=snakemake.output.detectors,
                       comparison_png=snakemake.output.comparison,
                       sharpness_png=snakemake.output.sharpness, report_path=snakemake.output.report,
                       timeline_paths=snakemake.input.timelines,
                       effects_path=snakemake.input.get("effects"), effects_png=snakemake.input.get("effects_png"))

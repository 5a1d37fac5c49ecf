"""Snakemake adapter for rule interventions: see gradscope.pipeline.write_interventions."""
from gradscope.logs import log_to
from gradscope.pipeline import write_interventions

with log_to(snakemake.log[0]):
    write_interventions(snakemake.wildcards.experiment, snakemake.params.runs, metrics_paths=snakemake.input.metrics,
                        summary_paths=snakemake.input.summaries, timeline_paths=snakemake.input.timelines,
                        curvature_paths=snakemake.input.curvature, examples_paths=snakemake.input.examples,
                        plots_settings=snakemake.params.plots, runs_path=snakemake.output.runs,
                        effects_path=snakemake.output.effects, effects_png=snakemake.output.effects_png)

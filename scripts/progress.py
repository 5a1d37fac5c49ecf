"""Snakemake adapter for rule progress: see gradscope.pipeline.write_progress."""
from gradscope.logs import log_to
from gradscope.pipeline import write_progress

with log_to(snakemake.log[0]):
    i = snakemake.input
    write_progress(snakemake.params.progress, data_settings=snakemake.params.data, loss=snakemake.params.loss,
                   dataset={"train": i.train, "test": i.test, "meta": i.meta}, manifest=i.manifest,
                   metrics_path=i.metrics, out=snakemake.output.table, figure=snakemake.output.figure,
                   run_id=snakemake.params.run_id, dpi=snakemake.params.plots["dpi"])

"""Snakemake adapter for rule train: see gradscope.pipeline.train_run."""
from pathlib import Path

from gradscope.artifacts import record_invocation
from gradscope.logs import log_to
from gradscope.pipeline import train_run

with log_to(snakemake.log[0]):
    record_invocation(Path(snakemake.output.metrics).parent.parent)  # what later fix commands carry
    train_run(snakemake.params.settings, dataset=dict(snakemake.input.items()),
              out_dir=Path(snakemake.output.metrics).parent, run_id=snakemake.params.run_id,
              threads=snakemake.threads)

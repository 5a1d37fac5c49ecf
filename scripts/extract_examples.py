"""Snakemake adapter for rule extract_examples: see gradscope.pipeline.extract_examples."""
from pathlib import Path

from gradscope.logs import log_to
from gradscope.pipeline import extract_examples

with log_to(snakemake.log[0]):
    extract_examples(snakemake.params.examples, loss=snakemake.params.loss, device=snakemake.params.device,
                     data_dir=Path(snakemake.input.meta).parent, manifest=snakemake.input.manifest,
                     step=int(snakemake.wildcards.step), out=snakemake.output[0], run_id=snakemake.params.run_id)

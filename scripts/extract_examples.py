"""Snakemake adapter for rule extract_examples: see gradscope.pipeline.extract_examples.

One job covers one checkpoint (its output is that checkpoint's table) or every checkpoint of a
run (its output is the run's examples/ folder; checkpoint_jobs: per_run)."""

from gradscope import layout
from gradscope.logs import log_to
from gradscope.pipeline import extract_examples
from gradscope.resources import use_threads

out = snakemake.output[0]
with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)  # the config's threads.extract_examples
    for step in snakemake.params.steps:
        extract_examples(snakemake.params.examples, loss=snakemake.params.loss, device=snakemake.params.device,
                         dataset=dict(snakemake.input.items()), manifest=snakemake.input.get("manifest"), step=step,
                         checkpoints=snakemake.params.checkpoints, model=snakemake.params.model,
                         out=out if "step" in snakemake.wildcards.keys() else layout.partition_file(out, "examples", step),
                         run_id=snakemake.params.run_id)

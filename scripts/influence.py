"""Snakemake adapter for rule influence: see gradscope.pipeline.compute_influence."""
from gradscope.logs import log_to
from gradscope.pipeline import compute_influence
from gradscope.resources import use_threads

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)  # the config's threads.influence
    compute_influence(snakemake.params.influence, examples_paths=snakemake.input.examples,
                      metrics_path=snakemake.input.metrics, train_path=snakemake.input.train,
                      test_path=snakemake.input.test, out=dict(snakemake.output.items()),
                      run_id=snakemake.params.run_id)

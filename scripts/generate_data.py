"""Snakemake adapter for rule generate_data: see gradscope.pipeline.generate_data."""
from gradscope.logs import log_to
from gradscope.pipeline import generate_data

with log_to(snakemake.log[0]):
    generate_data(snakemake.params.data, train_path=snakemake.output.train, test_path=snakemake.output.test,
                  meta_path=snakemake.output.meta)

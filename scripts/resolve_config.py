"""Snakemake adapter for rule resolve_config: the fully resolved run config, as YAML."""
from gradscope.artifacts import write_yaml
from gradscope.logs import log_to

with log_to(snakemake.log[0]):
    write_yaml(dict(snakemake.params.settings), snakemake.output[0])

"""Snakemake adapter for rule resolve_config: the run's resolved config, as YAML, holding the
settings that apply to the run and its dataset id (gradscope.config.run_config); the rule's
params, and so what reruns, are the full settings. Beside it, invocation.json: the --configfile and
--config arguments of the invocation that made it, which the fix commands printed later (by
`gradscope show`, `gradscope runs`, the dashboards) carry."""
from pathlib import Path

from gradscope.artifacts import record_invocation, write_yaml
from gradscope.config import run_config
from gradscope.logs import log_to

with log_to(snakemake.log[0]):
    write_yaml(run_config(dict(snakemake.params.settings)), snakemake.output[0])
    record_invocation(Path(snakemake.output[0]).parent)

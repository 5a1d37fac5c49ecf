# gradscope: generate data -> train -> per-example statistics -> signals, curvature -> figures -> reports.
# The map is in README.md ("The DAG"); each stage is one file under workflow/rules/.
from snakemake.utils import min_version

import gradscope.config

min_version("9.0")


# A syntax error in the config file is named with its line and column (Snakemake's message names neither).
gradscope.config.check_config_file("config/config.yaml")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/examples.smk"
include: "workflow/rules/signals.smk"
include: "workflow/rules/curvature.smk"
include: "workflow/rules/influence.smk"
include: "workflow/rules/progress.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/dashboard.smk"


rule all:
    input:
        get_all_targets(),
    default_target: True

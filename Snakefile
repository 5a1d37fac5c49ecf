# gradscope: generate data -> train -> per-example statistics -> signals, curvature -> figures -> reports.
# The map is in docs/workflow.md ("The DAG"); each stage is one file under workflow/rules/.
from snakemake.utils import min_version

import gradscope.config

min_version("9.0")


# Run from this folder, the config is config/config.yaml (relative to the working directory), then
# each --configfile and --config. Used as a Snakemake module by another workflow (`module gradscope:
# snakefile: ".../Snakefile"  config: config`), it is the config the module statement passes (Snakemake
# then skips the `configfile:` below): the importing workflow's, validated and filled here as ever.
AS_MODULE = not workflow.modifier.is_main_snakefile()

if not AS_MODULE:
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
include: "workflow/rules/timeline.smk"
include: "workflow/rules/interventions.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/dashboard.smk"


rule all:
    input:
        get_all_targets(),
    default_target: True

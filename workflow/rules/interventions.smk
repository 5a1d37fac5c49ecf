# An intervention experiment's comparison (gradscope.interventions): its runs' figures beside its parent's, each
# effect as flagged minus control over seeds, and their figure; read by its sweep report and dashboard. The
# derived datasets themselves are generate_data jobs (get_parent_inputs), their runs ordinary runs.
rule interventions:
    input:
        unpack(get_intervention_inputs),
    output:
        runs=layout.SWEEP["interventions"],
        effects=layout.SWEEP["effects"],
        effects_png=report(
            layout.SWEEP["effects_png"],
            caption="../report/effects.rst",
            category="{experiment}",
            subcategory="sweep",
        ),
    wildcard_constraints:
        experiment=INTERVENTION_EXPERIMENT,
    log:
        layout.log("interventions", "experiment"),
    params:
        runs=lambda wc: [intervention_record(r, wc) for r in get_intervention_runs(wc)],
        plots=lambda wc: get_experiment_runs(wc)[0].settings["plots"],
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("interventions"),
        runtime=get_runtime("interventions"),
    script:
        "../../scripts/interventions.py"

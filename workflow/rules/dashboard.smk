# Interactive HTML dashboards (gradscope.dashboard): one per sweep and an index over all experiments.
# Each page inlines plotly.js and its data, so it opens from disk anywhere.
rule dashboard:
    input:
        unpack(get_dashboard_inputs),
    output:
        layout.SWEEP["dashboard"],
    log:
        layout.log("dashboard", "experiment"),
    params:
        runs=lambda wc: [{"id": r.id, "name": r.name, "varying": r.varying} for r in get_experiment_runs(wc)],
        dashboard=CONFIG["dashboard"],
    conda:
        "../../envs/gradscope.yaml"
    threads: get_threads("dashboard")
    resources:
        # One run's tables in memory at a time, and every run's page data (resources.estimate_dashboard)
        mem_mb=get_mem_mb("dashboard"),
        runtime=get_runtime("dashboard"),
    script:
        "../../scripts/dashboard.py"


rule dashboard_index:
    input:
        # Not the sweep reports: `rule all` builds them, and the index links them without waiting for them.
        dashboards=expand(layout.SWEEP["dashboard"], experiment=EXPERIMENTS),
    output:
        layout.INDEX,
    log:
        layout.log("dashboard_index", "once"),
    params:
        experiments={e: [r.id for r in RUNS.values() if r.experiment == e] for e in EXPERIMENTS},
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("dashboard_index"),
        runtime=get_runtime("dashboard_index"),
    script:
        "../../scripts/dashboard_index.py"

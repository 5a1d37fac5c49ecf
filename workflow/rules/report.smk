rule report:
    input:
        config=layout.RUN["config"],
        metrics=layout.RUN["metrics"],
        summary=layout.RUN["signals_summary"],
        curvature=get_curvature_files,
        training=layout.RUN["figure_training"],
        flagged=layout.RUN["figure_flagged"],
        curvature_png=layout.RUN["figure_curvature"],
        gif=layout.RUN["gif"],
        group_losses=layout.RUN["figure_group_losses"],
        loss_changes=layout.RUN["figure_loss_changes"],
        cartography=layout.RUN["figure_cartography"],
        density=get_density_figure,
        influence=get_influence_summary,
        progress=get_progress_outputs,
        timeline=layout.RUN["timeline_summary"],
        timeline_png=layout.RUN["figure_timeline"],
    output:
        layout.RUN["report"],
    log:
        layout.log("report"),
    params:
        run_id="{experiment}/{run}",  # Snakemake fills in the wildcards
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("report"),
        runtime=get_runtime("report"),
    script:
        "../../scripts/report.py"


rule sweep_report:
    input:
        unpack(get_sweep_inputs),
    output:
        runs=layout.SWEEP["runs"],
        detectors=layout.SWEEP["detectors"],
        comparison=report(
            layout.SWEEP["comparison"],
            caption="../report/comparison.rst",
            category="{experiment}",
            subcategory="sweep",
        ),
        sharpness=report(
            layout.SWEEP["sharpness"],
            caption="../report/sweep_sharpness.rst",
            category="{experiment}",
            subcategory="sweep",
        ),
        report=layout.SWEEP["report"],
    log:
        layout.log("sweep_report", "experiment"),
    params:
        runs=lambda wc: [{"id": r.id, "name": r.name, "varying": r.varying, "optimizer": r.settings["optim"]["name"]}
                         for r in get_experiment_runs(wc)],
        plots=lambda wc: get_experiment_runs(wc)[0].settings["plots"],
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("sweep_report"),
        runtime=get_runtime("sweep_report"),
    script:
        "../../scripts/sweep_report.py"

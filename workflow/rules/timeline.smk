# One timeline per run (gradscope.timeline): loss spikes, sharpness reaching and leaving 2/lr, opposing groups
# in antiphase and the generalization events, linked to one another, with the figure on one step axis.
# Every run has curvature and signals; where 2/lr does not apply (an adaptive optimizer) there are no crossings.
rule timeline:
    input:
        metrics=layout.RUN["metrics"],
        curvature=get_curvature_files,
        group_losses=layout.RUN["signals_group_losses"],
        group_pairs=layout.RUN["signals_group_pairs"],
        summary=layout.RUN["signals_summary"],
    output:
        events=layout.RUN["timeline_events"],
        links=layout.RUN["timeline_links"],
        summary=layout.RUN["timeline_summary"],
    log:
        layout.log("timeline"),
    params:
        timeline=get_settings("timeline"),
        run_id="{experiment}/{run}",  # Snakemake fills in the wildcards
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("timeline"),
        runtime=get_runtime("timeline"),
    script:
        "../../scripts/timeline.py"


# The timeline's figure, from its tables: a plotting setting (dpi) redraws it and writes no table again.
rule plot_timeline:
    input:
        metrics=layout.RUN["metrics"],
        curvature=get_curvature_files,
        events=layout.RUN["timeline_events"],
        summary=layout.RUN["timeline_summary"],
        group_losses=layout.RUN["signals_group_losses"],
    output:
        report(
            layout.RUN["figure_timeline"],
            caption="../report/timeline.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
    log:
        layout.log("plot_timeline"),
    params:
        plots=get_settings("plots"),
        run_id="{experiment}/{run}",  # Snakemake fills in the wildcards
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("plots"),
        runtime=get_runtime("plots"),
    script:
        "../../scripts/plot_timeline.py"

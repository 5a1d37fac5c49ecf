rule plots:
    input:
        metrics=layout.RUN["metrics"],
        summary=layout.RUN["signals_summary"],
        curvature=get_curvature_files,
    output:
        training=report(
            layout.RUN["figure_training"],
            caption="../report/training.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
        flagged=report(
            layout.RUN["figure_flagged"],
            caption="../report/flagged.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
        curvature=report(
            layout.RUN["figure_curvature"],
            caption="../report/curvature.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
    log:
        layout.log("plots"),
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
        "../../scripts/plots.py"


rule animate:
    input:
        examples=get_examples_files,
        detections=layout.RUN["signals_detections"],
    output:
        gif=report(
            layout.RUN["gif"],
            caption="../report/gradient_pca.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
        frames=directory(layout.RUN["frames"]),
    log:
        layout.log("animate"),
    params:
        plots=get_settings("plots"),
        run_id="{experiment}/{run}",  # Snakemake fills in the wildcards
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("animate"),
        runtime=get_runtime("animate"),
    script:
        "../../scripts/animate.py"


rule plot_density:
    input:
        curvature=get_curvature_files,
    output:
        report(
            layout.RUN["figure_density"],
            caption="../report/density.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
    log:
        layout.log("plot_density"),
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
        "../../scripts/plot_density.py"


rule plot_signals:
    input:
        metrics=layout.RUN["metrics"],
        meta=lambda wc: get_dataset_files(wc)["meta"],
        groups=layout.RUN["signals_groups"],
        group_pairs=layout.RUN["signals_group_pairs"],
        group_losses=layout.RUN["signals_group_losses"],
        loss_changes=layout.RUN["signals_loss_changes"],
        per_example=layout.RUN["signals_per_example"],
    output:
        group_losses=report(
            layout.RUN["figure_group_losses"],
            caption="../report/group_losses.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
        loss_changes=report(
            layout.RUN["figure_loss_changes"],
            caption="../report/loss_changes.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
        cartography=report(
            layout.RUN["figure_cartography"],
            caption="../report/cartography.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
    log:
        layout.log("plot_signals"),
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
        "../../scripts/plot_signals.py"

rule plots:
    input:
        metrics="results/runs/{experiment}/{run}/train/metrics.parquet",
        summary="results/runs/{experiment}/{run}/signals/summary.json",
        curvature=get_curvature_files,
    output:
        training=report(
            "results/runs/{experiment}/{run}/figures/training.png",
            caption="../report/training.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
        flagged=report(
            "results/runs/{experiment}/{run}/figures/flagged.png",
            caption="../report/flagged.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
        curvature=report(
            "results/runs/{experiment}/{run}/figures/curvature.png",
            caption="../report/curvature.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
    log:
        "logs/plots/{experiment}/{run}.log",
    params:
        plots=get_settings("plots"),
        run_id=lambda wc: get_run(wc).id,
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
        detections="results/runs/{experiment}/{run}/signals/detections.parquet",
    output:
        gif=report(
            "results/runs/{experiment}/{run}/figures/gradient_pca.gif",
            caption="../report/gradient_pca.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
        frames=directory("results/runs/{experiment}/{run}/figures/pca_frames"),
    log:
        "logs/animate/{experiment}/{run}.log",
    params:
        plots=get_settings("plots"),
        run_id=lambda wc: get_run(wc).id,
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
            "results/runs/{experiment}/{run}/figures/density.png",
            caption="../report/density.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
    log:
        "logs/plot_density/{experiment}/{run}.log",
    params:
        plots=get_settings("plots"),
        run_id=lambda wc: get_run(wc).id,
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
        metrics="results/runs/{experiment}/{run}/train/metrics.parquet",
        meta=lambda wc: get_dataset_files(wc)["meta"],
        groups="results/runs/{experiment}/{run}/signals/groups.parquet",
        group_pairs="results/runs/{experiment}/{run}/signals/group_pairs.parquet",
        group_losses="results/runs/{experiment}/{run}/signals/group_losses.parquet",
        loss_changes="results/runs/{experiment}/{run}/signals/loss_changes.parquet",
        per_example="results/runs/{experiment}/{run}/signals/per_example.parquet",
    output:
        group_losses=report(
            "results/runs/{experiment}/{run}/figures/group_losses.png",
            caption="../report/group_losses.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
        loss_changes=report(
            "results/runs/{experiment}/{run}/figures/loss_changes.png",
            caption="../report/loss_changes.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
        cartography=report(
            "results/runs/{experiment}/{run}/figures/cartography.png",
            caption="../report/cartography.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
    log:
        "logs/plot_signals/{experiment}/{run}.log",
    params:
        plots=get_settings("plots"),
        run_id=lambda wc: get_run(wc).id,
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("plots"),
        runtime=get_runtime("plots"),
    script:
        "../../scripts/plot_signals.py"

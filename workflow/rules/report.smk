rule report:
    input:
        config="results/runs/{experiment}/{run}/config.yaml",
        metrics="results/runs/{experiment}/{run}/train/metrics.parquet",
        summary="results/runs/{experiment}/{run}/signals/summary.json",
        curvature=get_curvature_files,
        training="results/runs/{experiment}/{run}/figures/training.png",
        flagged="results/runs/{experiment}/{run}/figures/flagged.png",
        curvature_png="results/runs/{experiment}/{run}/figures/curvature.png",
        gif="results/runs/{experiment}/{run}/figures/gradient_pca.gif",
        group_losses="results/runs/{experiment}/{run}/figures/group_losses.png",
        loss_changes="results/runs/{experiment}/{run}/figures/loss_changes.png",
        cartography="results/runs/{experiment}/{run}/figures/cartography.png",
        density=get_density_figure,
        influence=get_influence_summary,
    output:
        "results/runs/{experiment}/{run}/report.md",
    log:
        "logs/report/{experiment}/{run}.log",
    params:
        run_id=lambda wc: get_run(wc).id,
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
        runs="results/sweeps/{experiment}/runs.parquet",
        detectors="results/sweeps/{experiment}/detectors.parquet",
        comparison=report(
            "results/sweeps/{experiment}/comparison.png",
            caption="../report/comparison.rst",
            category="{experiment}",
            subcategory="sweep",
        ),
        sharpness=report(
            "results/sweeps/{experiment}/sharpness.png",
            caption="../report/sweep_sharpness.rst",
            category="{experiment}",
            subcategory="sweep",
        ),
        report="results/sweeps/{experiment}/report.md",
    log:
        "logs/sweep_report/{experiment}.log",
    params:
        runs=lambda wc: [{"id": r.id, "name": r.name, "varying": r.varying} for r in get_experiment_runs(wc)],
        plots=lambda wc: get_experiment_runs(wc)[0].settings["plots"],
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("sweep_report"),
        runtime=get_runtime("sweep_report"),
    script:
        "../../scripts/sweep_report.py"

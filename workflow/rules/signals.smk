rule detect_signals:
    input:
        examples=get_examples_files,
        meta=lambda wc: get_dataset_files(wc)["meta"],
        metrics="results/runs/{experiment}/{run}/train/metrics.parquet",
    output:
        detections="results/runs/{experiment}/{run}/signals/detections.parquet",
        evaluation="results/runs/{experiment}/{run}/signals/evaluation.parquet",
        groups="results/runs/{experiment}/{run}/signals/groups.parquet",
        group_pairs="results/runs/{experiment}/{run}/signals/group_pairs.parquet",
        group_losses="results/runs/{experiment}/{run}/signals/group_losses.parquet",
        loss_changes="results/runs/{experiment}/{run}/signals/loss_changes.parquet",
        per_example="results/runs/{experiment}/{run}/signals/per_example.parquet",
        summary="results/runs/{experiment}/{run}/signals/summary.json",
    log:
        "logs/detect_signals/{experiment}/{run}.log",
    params:
        signals=get_settings("signals"),
        run_id=lambda wc: get_run(wc).id,
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("detect_signals"),
        runtime=get_runtime("detect_signals"),
    script:
        "../../scripts/detect_signals.py"

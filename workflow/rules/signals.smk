rule detect_signals:
    input:
        examples=get_examples_files,
        meta=lambda wc: get_dataset_files(wc)["meta"],
    output:
        detections="results/runs/{experiment}/{run}/signals/detections.parquet",
        groups="results/runs/{experiment}/{run}/signals/groups.parquet",
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

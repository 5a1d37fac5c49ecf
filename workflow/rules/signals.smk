rule detect_signals:
    input:
        examples=get_examples_files,
        meta=lambda wc: get_dataset_files(wc)["meta"],
        metrics=layout.RUN["metrics"],
    output:
        **{name: layout.RUN[f"signals_{name}"] for name in layout.SIGNALS},
    log:
        layout.log("detect_signals"),
    params:
        signals=get_settings("signals"),
        run_id="{experiment}/{run}",  # Snakemake fills in the wildcards
    conda:
        "../../envs/gradscope.yaml"
    threads: get_threads("detect_signals")
    resources:
        mem_mb=get_mem_mb("detect_signals"),
        runtime=get_runtime("detect_signals"),
    script:
        "../../scripts/detect_signals.py"

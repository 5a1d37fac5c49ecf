rule progress:
    input:
        manifest=layout.RUN["manifest"],
        metrics=layout.RUN["metrics"],
        train=lambda wc: get_dataset_files(wc)["train"],
        test=lambda wc: get_dataset_files(wc)["test"],
        meta=lambda wc: get_dataset_files(wc)["meta"],
        code=get_code_inputs,  # a python model factory's source: the model is rebuilt here
    output:
        table=layout.RUN["progress"],
        figure=report(
            layout.RUN["figure_progress"],
            caption="../report/progress.rst",
            category="{experiment}",
            subcategory="{run}",
        ),
    log:
        layout.log("progress"),
    benchmark:
        layout.benchmark("progress")
    params:
        progress=get_settings("progress"),
        data=get_settings("data"),
        loss=get_settings("train", "loss"),
        plots=get_settings("plots"),
        run_id="{experiment}/{run}",  # Snakemake fills in the wildcards
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("progress"),
        runtime=get_runtime("progress"),
    script:
        "../../scripts/progress.py"

rule influence:
    input:
        examples=get_examples_files,
        metrics=layout.RUN["metrics"],
        train=lambda wc: get_dataset_files(wc)["train"],
        test=lambda wc: get_dataset_files(wc)["test"],
    output:
        **{name: layout.RUN[f"influence_{name}"] for name in layout.INFLUENCE},
    log:
        layout.log("influence"),
    benchmark:
        layout.benchmark("influence")
    params:
        influence=get_settings("influence"),
        run_id="{experiment}/{run}",  # Snakemake fills in the wildcards
    conda:
        "../../envs/gradscope.yaml"
    threads: get_threads("influence")
    resources:
        mem_mb=get_mem_mb("influence"),
        runtime=get_runtime("influence"),
    script:
        "../../scripts/influence.py"

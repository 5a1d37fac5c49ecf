rule generate_data:
    input:
        get_data_inputs,
        unpack(get_parent_inputs),  # an intervention's dataset: its parent's dataset and detections
        code=get_code_inputs,  # a python data factory's source: an edit regenerates the dataset
    output:
        **layout.DATASET,
    log:
        layout.log("generate_data", "dataset"),
    params:
        data=lambda wc: DATASETS[wc.dataset],
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("generate_data"),
        runtime=get_runtime("generate_data"),
    script:
        "../../scripts/generate_data.py"

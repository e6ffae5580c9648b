# Datasets from the Hugging Face Hub (acquire.datasets): fetched resumably into the persistent
# cache acquire.cache and unpacked into the layout ingest reads, on the submit host (network).


localrules:
    acquire_dataset,


for _name, _entry in ACQUIRE.items():
    if _entry.get("format", "archives") == "parquet" and _entry.get("metadata"):
        raise WorkflowError(
            f"acquire.datasets.{_name}.metadata: must be null with format: parquet "
            "(the shards hold the id, lat and lon columns)"
        )


rule acquire_dataset:
    output:
        images=directory("results/acquired/{acquired}/images"),
        metadata="results/acquired/{acquired}/metadata.csv",
        source="results/acquired/{acquired}/source.json",
        provenance=provenance("acquire_dataset", "{acquired}"),
    log:
        "logs/acquire/{acquired}.log",
    benchmark:
        "results/runtime/acquire/{acquired}.tsv"
    conda:
        "../envs/train.yaml"
    params:
        settings=lambda wildcards: ACQUIRE[wildcards.acquired],
        on_bad_input=config["ingest"]["on_bad_input"],
        code=code_of_script("acquire_dataset"),
    message:
        "Fetch the Hub dataset {wildcards.acquired} and unpack it for ingest"
    script:
        "../scripts/acquire_dataset.py"

# Ingest: a dataset's image folder (nested folders too) and metadata table -> a validated
# manifest. The image files are not declared inputs (planning stays independent of their
# number); the param `images` (a digest of their listing) reruns the jobs when any changes. Each
# image's check is kept in the per-item memo (memo.dir), so a rerun reads only new or changed
# files. With scale_out.parts > 1 the checks run as that many `ingest_part` jobs (separate
# SLURM jobs under a cluster profile), and the ingest job gathers them.


rule ingest_corpus:
    input:
        unpack(lambda wildcards: dataset_inputs("corpus")),
        parts=ingest_part_files("corpus"),
    output:
        manifest="results/manifest.parquet",
        rejected=report(
            "results/ingest/rejected.csv",
            category="1. Ingest",
            caption="../report/rejected.rst",
        ),
        summary="results/ingest/summary.json",
        listing="results/ingest/listing.parquet",
        provenance=provenance("ingest_corpus"),
    log:
        log="logs/ingest/corpus.log",
        rejected="logs/ingest/corpus-rejected.csv",
    benchmark:
        "results/runtime/ingest/corpus.tsv"
    conda:
        "../envs/ingest.yaml"
    threads: 2
    params:
        name=CORPUS["name"],
        dataset=dataset_config("corpus"),
        settings=config["ingest"],
        split_mode="hash",
        images=lambda wildcards: images_digest("corpus"),
        code=code_of_script("ingest"),
    message:
        "Ingest the corpus {params.name}: check every image, hash it, split train/test"
    script:
        "../scripts/ingest.py"


rule ingest_benchmark:
    input:
        unpack(lambda wildcards: dataset_inputs(wildcards.benchmark)),
        parts=lambda wildcards: ingest_part_files(wildcards.benchmark),
    output:
        manifest="results/benchmarks/{benchmark}/manifest.parquet",
        rejected=report(
            "results/benchmarks/{benchmark}/rejected.csv",
            category="1. Ingest",
            caption="../report/rejected.rst",
        ),
        summary="results/benchmarks/{benchmark}/summary.json",
        listing="results/benchmarks/{benchmark}/listing.parquet",
        provenance=provenance("ingest_benchmark", "{benchmark}"),
    log:
        log="logs/ingest/benchmark-{benchmark}.log",
        rejected="logs/ingest/benchmark-{benchmark}-rejected.csv",
    benchmark:
        "results/runtime/ingest/benchmark-{benchmark}.tsv"
    conda:
        "../envs/ingest.yaml"
    threads: 2
    params:
        name=lambda wildcards: wildcards.benchmark,
        dataset=lambda wildcards: dataset_config(wildcards.benchmark),
        settings=config["ingest"],
        split_mode="all_test",
        images=lambda wildcards: images_digest(wildcards.benchmark),
        code=code_of_script("ingest"),
    message:
        "Ingest the benchmark {wildcards.benchmark}"
    script:
        "../scripts/ingest.py"


rule ingest_part:
    input:
        unpack(lambda wildcards: dataset_inputs(wildcards.dataset)),
    output:
        facts="results/ingest/parts/{dataset}/part-{part}.parquet",
        provenance=provenance("ingest_part", "{dataset}", "{part}"),
    log:
        "logs/ingest/parts/{dataset}-{part}.log",
    benchmark:
        "results/runtime/ingest/parts/{dataset}-{part}.tsv"
    wildcard_constraints:
        part=r"\d+",
    conda:
        "../envs/ingest.yaml"
    threads: 2
    params:
        dataset=lambda wildcards: dataset_config(wildcards.dataset),
        settings=config["ingest"],
        part=lambda wildcards: int(wildcards.part),
        parts=config["scale_out"]["parts"],
        images=lambda wildcards: images_digest(wildcards.dataset, int(wildcards.part)),
        code=code_of_script("ingest_part"),
    message:
        "Check the images of part {wildcards.part} of {wildcards.dataset}"
    script:
        "../scripts/ingest_part.py"

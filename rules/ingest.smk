rule ingest_corpus:
    input:
        unpack(lambda wildcards: dataset_inputs("corpus")),
    output:
        manifest="results/manifest.parquet",
        rejected=report(
            "results/ingest/rejected.csv",
            category="1. Ingest",
            caption="../report/rejected.rst",
        ),
        summary="results/ingest/summary.json",
        provenance=provenance("ingest_corpus"),
    log:
        "logs/ingest/corpus.log",
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
        code=code_of_script("ingest"),
    message:
        "Ingest the corpus {params.name}: check every image, hash it, split train/test"
    script:
        "../scripts/ingest.py"


rule ingest_benchmark:
    input:
        unpack(lambda wildcards: dataset_inputs(wildcards.benchmark)),
    output:
        manifest="results/benchmarks/{benchmark}/manifest.parquet",
        rejected=report(
            "results/benchmarks/{benchmark}/rejected.csv",
            category="1. Ingest",
            caption="../report/rejected.rst",
        ),
        summary="results/benchmarks/{benchmark}/summary.json",
        provenance=provenance("ingest_benchmark", "{benchmark}"),
    log:
        "logs/ingest/benchmark-{benchmark}.log",
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
        code=code_of_script("ingest"),
    message:
        "Ingest the benchmark {wildcards.benchmark}"
    script:
        "../scripts/ingest.py"

# No eval image in the training data: training images identical to (or near-duplicates of) an
# image of the corpus' test split or of any benchmark are listed here, and excluded by the SFT
# datasets and the baselines.


rule leakage:
    input:
        corpus="results/manifest.parquet",
        benchmarks=[manifest_of(b) for b in BENCHMARKS],
    output:
        report=report(
            "results/leakage/train_excluded.csv",
            category="1. Ingest",
            caption="../report/leakage.rst",
        ),
        summary="results/leakage/summary.json",
        provenance=provenance("leakage"),
    log:
        "logs/leakage.log",
    benchmark:
        "results/runtime/leakage.tsv"
    conda:
        "../envs/baselines.yaml"
    params:
        benchmarks=list(BENCHMARKS),
        settings=config["leakage"],
        memo=config["memo"]["dir"],
        code=code_of_script("leakage"),
    message:
        "Training images that are eval images (same bytes or near-duplicates): excluded"
    script:
        "../scripts/leakage.py"

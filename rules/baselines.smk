# Floor baselines (training-set medoid, image-feature kNN): the first rows of every accuracy table.


rule image_features:
    message:
        "Colour/thumbnail features of the {wildcards.dataset} images (kNN baseline)"
    input:
        manifest=lambda wildcards: manifest_of(wildcards.dataset),
    output:
        "results/baselines/features/{dataset}.parquet",
    params:
        settings={k: v for k, v in config["baselines"]["knn"].items() if k != "neighbors"},
        code=code_version("baselines", "ingest", "errors", "workflow"),
    log:
        "logs/baselines/features-{dataset}.log",
    benchmark:
        "results/runtime/baselines/features-{dataset}.tsv"
    threads: 2
    conda:
        "../envs/baselines.yaml"
    script:
        "../scripts/image_features.py"


rule predict_medoid:
    message:
        "Baseline 'medoid' on {wildcards.evalset}: every image gets the training medoid"
    input:
        corpus="results/manifest.parquet",
        targets=lambda wildcards: manifest_of(dataset_of(wildcards.evalset)),
    output:
        "results/predictions/medoid/{evalset}.csv",
    params:
        seed=config["evaluate"]["seed"],
        code=code_version("baselines", "geo", "errors", "workflow"),
    log:
        "logs/predict/medoid-{evalset}.log",
    conda:
        "../envs/baselines.yaml"
    script:
        "../scripts/predict_medoid.py"


rule predict_knn:
    message:
        "Baseline 'knn' on {wildcards.evalset}: nearest training images by image features"
    input:
        corpus="results/manifest.parquet",
        corpus_features="results/baselines/features/corpus.parquet",
        targets=lambda wildcards: manifest_of(dataset_of(wildcards.evalset)),
        target_features=lambda wildcards: (
            f"results/baselines/features/{dataset_of(wildcards.evalset)}.parquet"
        ),
    output:
        "results/predictions/knn/{evalset}.csv",
    params:
        neighbors=config["baselines"]["knn"]["neighbors"],
        code=code_version("baselines", "geo", "errors", "workflow"),
    log:
        "logs/predict/knn-{evalset}.log",
    conda:
        "../envs/baselines.yaml"
    script:
        "../scripts/predict_knn.py"

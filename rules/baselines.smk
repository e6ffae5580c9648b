# Floor baselines (training-set medoid, image-feature kNN): the first rows of every accuracy table.


rule image_features:
    input:
        manifest=lambda wildcards: manifest_of(wildcards.dataset),
    output:
        features="results/baselines/features/{dataset}.parquet",
        provenance=provenance("image_features", "{dataset}"),
    log:
        "logs/baselines/features-{dataset}.log",
    benchmark:
        "results/runtime/baselines/features-{dataset}.tsv"
    conda:
        "../envs/baselines.yaml"
    threads: 2
    params:
        settings={
            k: v for k, v in config["baselines"]["knn"].items() if k != "neighbors"
        },
        code=code_of_script("image_features"),
    message:
        "Colour/thumbnail features of the {wildcards.dataset} images (kNN baseline)"
    script:
        "../scripts/image_features.py"


rule predict_medoid:
    input:
        corpus="results/manifest.parquet",
        targets=lambda wildcards: manifest_of(dataset_of(wildcards.evalset)),
    output:
        predictions="results/predictions/medoid/{evalset}.csv",
        provenance=provenance("predict_medoid", "{evalset}"),
    log:
        "logs/predict/medoid-{evalset}.log",
    conda:
        "../envs/baselines.yaml"
    params:
        seed=config["evaluate"]["seed"],
        code=code_of_script("predict_medoid"),
    message:
        "Baseline 'medoid' on {wildcards.evalset}: every image gets the training medoid"
    script:
        "../scripts/predict_medoid.py"


rule predict_knn:
    input:
        corpus="results/manifest.parquet",
        corpus_features="results/baselines/features/corpus.parquet",
        targets=lambda wildcards: manifest_of(dataset_of(wildcards.evalset)),
        target_features=lambda wildcards: (
            f"results/baselines/features/{dataset_of(wildcards.evalset)}.parquet"
        ),
    output:
        predictions="results/predictions/knn/{evalset}.csv",
        provenance=provenance("predict_knn", "{evalset}"),
    log:
        "logs/predict/knn-{evalset}.log",
    conda:
        "../envs/baselines.yaml"
    params:
        neighbors=config["baselines"]["knn"]["neighbors"],
        code=code_of_script("predict_knn"),
    message:
        "Baseline 'knn' on {wildcards.evalset}: nearest training images by image features"
    script:
        "../scripts/predict_knn.py"

# Floor baselines (training-set medoid, image-feature kNN): the first rows of every accuracy table.
# Both learn from the corpus' train split minus the training images that are eval images
# (rules/leakage.smk). Image features are memoized per image (memo.dir); with scale_out.parts > 1
# they are computed in that many part jobs and gathered. The features go first after ingest
# (priority 2, then the caption job: 1), so that the kNN baseline (one thread: numpy) and its
# evaluation run beside the caption job (one thread) instead of after the dataset (two). When
# few images are new, the features job asks for one thread (feature_threads: the pass over
# known images uses one core) and runs beside the caption job (BENCHMARKS.md, "incremental").

FEATURE_KEYS = ("thumbnail_px", "histogram_bins")
FEATURE_SETTINGS = {k: config["baselines"]["knn"][k] for k in FEATURE_KEYS}
FEATURE_PARTS = config["scale_out"]["parts"]


if FEATURE_PARTS == 1:

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
        priority: 2
        conda:
            "../envs/baselines.yaml"
        threads: feature_threads(2)
        params:
            settings=FEATURE_SETTINGS,
            part=0,
            parts=1,
            memo=config["memo"]["dir"],
            code=code_of_script("image_features"),
        message:
            "Colour/thumbnail features of the {wildcards.dataset} images (kNN baseline)"
        script:
            "../scripts/image_features.py"

else:

    rule image_features_part:
        input:
            manifest=lambda wildcards: manifest_of(wildcards.dataset),
        output:
            features="results/baselines/features/{dataset}/part-{part}.parquet",
            provenance=provenance("image_features_part", "{dataset}", "{part}"),
        log:
            "logs/baselines/features-{dataset}-part-{part}.log",
        benchmark:
            "results/runtime/baselines/features-{dataset}-part-{part}.tsv"
        wildcard_constraints:
            part=r"\d+",
        priority: 2
        conda:
            "../envs/baselines.yaml"
        threads: 2
        params:
            settings=FEATURE_SETTINGS,
            part=lambda wildcards: int(wildcards.part),
            parts=FEATURE_PARTS,
            memo=config["memo"]["dir"],
            code=code_of_script("image_features"),
        message:
            "Features of part {wildcards.part} of the {wildcards.dataset} images (kNN baseline)"
        script:
            "../scripts/image_features.py"

    rule image_features:
        input:
            manifest=lambda wildcards: manifest_of(wildcards.dataset),
            parts=expand(
                "results/baselines/features/{{dataset}}/part-{part}.parquet",
                part=range(FEATURE_PARTS),
            ),
        output:
            features="results/baselines/features/{dataset}.parquet",
            provenance=provenance("image_features", "{dataset}"),
        log:
            "logs/baselines/features-{dataset}.log",
        priority: 2
        conda:
            "../envs/baselines.yaml"
        params:
            code=code_of_script("image_features_gather"),
        message:
            "Gather the feature parts of the {wildcards.dataset} images (kNN baseline)"
        script:
            "../scripts/image_features_gather.py"


rule predict_medoid:
    input:
        corpus="results/manifest.parquet",
        excluded="results/leakage/train_excluded.csv",
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
        excluded="results/leakage/train_excluded.csv",
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
    benchmark:
        "results/runtime/predict/knn-{evalset}.tsv"
    conda:
        "../envs/baselines.yaml"
    threads: 1
    params:
        settings={
            k: v
            for k, v in config["baselines"]["knn"].items()
            if k not in FEATURE_KEYS
        },
        seed=config["evaluate"]["seed"],
        code=code_of_script("predict_knn"),
    message:
        "Baseline 'knn' on {wildcards.evalset}: nearest training images by image features"
    script:
        "../scripts/predict_knn.py"

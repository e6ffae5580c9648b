# Zero-shot baselines: base models behind an API answer for every eval-set image. They call the
# network, so they run on the submit host; answers persist in the caption stage's response store.


localrules:
    predict_zero_shot,


rule predict_zero_shot:
    input:
        targets=lambda wildcards: manifest_of(dataset_of(wildcards.evalset)),
        prompt=lambda wildcards: (
            f"config/prompts/{ZERO_SHOT[wildcards.zero_shot]['prompt_version']}.txt"
        ),
    output:
        predictions="results/predictions/{zero_shot}/{evalset}.csv",
        answers=directory("results/zeroshot/{zero_shot}/{evalset}/answers"),
        summary="results/zeroshot/{zero_shot}/{evalset}/summary.json",
        provenance=provenance("predict_zero_shot", "{zero_shot}", "{evalset}"),
    log:
        "logs/predict/{zero_shot}-{evalset}.log",
        failures="logs/predict/{zero_shot}-{evalset}.failures.csv",
    benchmark:
        "results/runtime/predict/{zero_shot}-{evalset}.tsv"
    conda:
        "../envs/captions.yaml"
    params:
        settings=lambda wildcards: ZERO_SHOT[wildcards.zero_shot],
        captions=CAPTIONS,
        memo=config["memo"]["dir"],
        code=code_of_script("predict_zero_shot"),
    message:
        "Zero-shot predictor {wildcards.zero_shot} answers for every image of {wildcards.evalset}"
    script:
        "../scripts/predict_zero_shot.py"

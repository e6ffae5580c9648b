# Supervised fine-tuning: LLaMA-Factory datasets from the valid geo-captions, training runs
# and their predictions. Downloads stay on the submit host; training and prediction are GPU jobs.


localrules:
    download_model,


rule sft_dataset:
    input:
        manifest="results/manifest.parquet",
        # Training images that are eval images (rules/leakage.smk): never in a dataset.
        excluded="results/leakage/train_excluded.csv",
        captions=f"{CAPTION_DIR}/captions",
        index=f"{CAPTION_DIR}/index.csv",
        instruction=lambda wildcards: (
            f"config/prompts/{SFT_DATASETS[wildcards.sft_dataset]['instruction']}.txt"
        ),
    output:
        dataset="results/sft/{sft_dataset}/{sft_dataset}.json",
        info="results/sft/{sft_dataset}/dataset_info.json",
        media=directory("results/sft/{sft_dataset}/media"),
        stats=report(
            "results/sft/{sft_dataset}/stats.json",
            category="4. Fine-tuning",
            caption="../report/sft_stats.rst",
        ),
        provenance=provenance("sft_dataset", "{sft_dataset}"),
    log:
        "logs/sft/dataset-{sft_dataset}.log",
    benchmark:
        "results/runtime/sft/dataset-{sft_dataset}.tsv"
    conda:
        "../envs/captions.yaml"
    params:
        captioner=CAPTIONER,
        settings=lambda wildcards: SFT_DATASETS[wildcards.sft_dataset],
        code=code_of_script("sft_dataset"),
    message:
        "LLaMA-Factory dataset {wildcards.sft_dataset} from the {params.captioner} captions"
    script:
        "../scripts/sft_dataset.py"


rule build_tiny_model:
    output:
        model=directory("results/models/tiny-qwen2vl"),
        provenance=provenance("build_tiny_model"),
    log:
        "logs/sft/build_tiny_model.log",
    benchmark:
        "results/runtime/sft/build_tiny_model.tsv"
    conda:
        "../envs/train.yaml"
    params:
        seed=0,
        code=code_of_script("build_tiny_model"),
    message:
        "Build the tiny Qwen2-VL-style model locally (random weights, local tokenizer)"
    script:
        "../scripts/build_tiny_model.py"


rule download_model:
    output:
        model=directory("results/models/hub/{model_slug}"),
        provenance=provenance("download_model", "{model_slug}"),
    log:
        "logs/sft/download-{model_slug}.log",
    conda:
        "../envs/train.yaml"
    params:
        repo_id=lambda wildcards: HUB_MODELS[wildcards.model_slug][0],
        revision=lambda wildcards: HUB_MODELS[wildcards.model_slug][1],
        code=code_of_script("download_model"),
    message:
        "Download {params.repo_id} ({params.revision}) from the Hugging Face Hub"
    script:
        "../scripts/download_model.py"


rule sft_token_stats:
    input:
        dataset=lambda wildcards: "results/sft/{d}/{d}.json".format(
            d=SFT_RUNS[wildcards.run]["dataset"]
        ),
        media=lambda wildcards: f"results/sft/{SFT_RUNS[wildcards.run]['dataset']}/media",
        model=lambda wildcards: model_dir(SFT_RUNS[wildcards.run]),
    output:
        stats="results/train/{run}/token_lengths.json",
        plot=report(
            "results/train/{run}/token_lengths.png",
            category="4. Fine-tuning",
            caption="../report/token_lengths.rst",
            labels={"run": "{run}", "plot": "token lengths"},
        ),
        provenance=provenance("sft_token_stats", "{run}"),
    log:
        "logs/train/{run}-token_lengths.log",
    benchmark:
        "results/runtime/train/{run}-token_lengths.tsv"
    conda:
        "../envs/train.yaml"
    params:
        settings=lambda wildcards: SFT_RUNS[wildcards.run],
        code=code_of_script("sft_token_stats"),
    message:
        "Token lengths of run {wildcards.run}'s dataset against its cutoff_len"
    script:
        "../scripts/sft_token_stats.py"


rule sft_train:
    input:
        unpack(train_inputs),
    output:
        adapter=directory("results/train/{run}/adapter"),
        config="results/train/{run}/llamafactory_train.yaml",
        state="results/train/{run}/trainer_state.json",
        loss=report(
            "results/train/{run}/loss.png",
            category="4. Fine-tuning",
            caption="../report/loss.rst",
            labels={"run": "{run}", "plot": "training loss"},
        ),
        provenance=provenance("sft_train", "{run}"),
    log:
        "logs/train/{run}.log",
    benchmark:
        "results/runtime/train/{run}.tsv"
    conda:
        "../envs/train.yaml"
    resources:
        **TRAIN_RESOURCES,
    params:
        # Only what shapes the model: SLURM resources, prediction settings or pinning a run
        # never make it retrain.
        settings=lambda wildcards: training_settings(wildcards.run),
        run_dir=lambda wildcards: f"results/train/{wildcards.run}",
        code=code_of_script("sft_train"),
    message:
        "Fine-tune run {wildcards.run} with LLaMA-Factory"
    script:
        "../scripts/sft_train.py"


rule predict_sft:
    input:
        adapter="results/train/{run}/adapter",
        model=lambda wildcards: model_dir(SFT_RUNS[wildcards.run]),
        targets=lambda wildcards: manifest_of(dataset_of(wildcards.evalset)),
        instruction=lambda wildcards: instruction_of_run(wildcards.run),
    output:
        predictions="results/predictions/{run}/{evalset}.csv",
        provenance=provenance("predict_sft", "{run}", "{evalset}"),
    log:
        "logs/predict/{run}-{evalset}.log",
    benchmark:
        "results/runtime/predict/{run}-{evalset}.tsv"
    conda:
        "../envs/train.yaml"
    resources:
        **TRAIN_RESOURCES,
    params:
        settings=lambda wildcards: SFT_RUNS[wildcards.run],
        dataset_settings=lambda wildcards: SFT_DATASETS[
            SFT_RUNS[wildcards.run]["dataset"]
        ],
        code=code_of_script("predict_sft"),
    message:
        "Run {wildcards.run} answers for every image of {wildcards.evalset}"
    script:
        "../scripts/predict_sft.py"

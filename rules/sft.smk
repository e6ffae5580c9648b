# Supervised fine-tuning: LLaMA-Factory datasets from the valid geo-captions, training runs
# and their predictions. Downloads stay on the submit host; training and prediction are GPU jobs.
#
# What makes a run retrain (see README "When does a run retrain?"): sft_train's params are every
# run setting that shapes the weights (geolocsft.sft.train.WORKFLOW_KEYS are the others), its
# inputs the dataset it trains on, the base model, the DeepSpeed configs and the token counts
# (whose own params are only what shapes the counts). No input reaches it through ancient(),
# so Snakemake always checks its own params. A pinned run (retrain_when_dataset_changes: false)
# trains on a snapshot of its dataset that is made once and has no producing job afterwards.


include: "sft_common.smk"


localrules:
    download_model,
    sft_run_dataset,  # hard links only: not worth a cluster job


rule sft_media:
    input:
        manifest="results/manifest.parquet",
        # Training images that are eval images (rules/leakage.smk): never in a dataset.
        excluded="results/leakage/train_excluded.csv",
        captions=f"{CAPTION_DIR}/captions",
        index=f"{CAPTION_DIR}/index.csv",
    output:
        part="results/parts/sft_media/{sft_dataset}/{part}.parquet",
    log:
        "logs/sft/media-{sft_dataset}-{part}.log",
    benchmark:
        "results/runtime/sft/media-{sft_dataset}-{part}.tsv"
    wildcard_constraints:
        part=r"\d+",
    conda:
        "../envs/captions.yaml"
    threads: 2
    params:
        settings=lambda wildcards: SFT_DATASETS[wildcards.sft_dataset],
        parts=PARTS,
        memo_dir=MEMO_DIR,
        code=code_of_script("sft_media"),
    message:
        "Media of dataset {wildcards.sft_dataset}, part {wildcards.part} of {params.parts}"
    script:
        "../scripts/sft_media.py"


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
        media_parts=media_parts,
    output:
        dataset="results/sft/{sft_dataset}/{sft_dataset}.json",
        info="results/sft/{sft_dataset}/dataset_info.json",
        media=directory("results/sft/{sft_dataset}/media"),
        media_index="results/sft/{sft_dataset}/media_sha256.parquet",
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
    # The captions, then the dataset, are the longest chain of a rerun (rules/geocaption.smk).
    priority: 1
    conda:
        "../envs/captions.yaml"
    threads: dataset_threads(2)
    params:
        captioner=CAPTIONER,
        settings=lambda wildcards: SFT_DATASETS[wildcards.sft_dataset],
        memo_dir=MEMO_DIR,
        code=code_of_script("sft_dataset"),
    message:
        "LLaMA-Factory dataset {wildcards.sft_dataset} from the {params.captioner} captions"
    script:
        "../scripts/sft_dataset.py"


rule sft_run_dataset:
    input:
        unpack(run_dataset_sources),
    output:
        snapshot=directory("results/train/{run}/dataset"),
        provenance=provenance("sft_run_dataset", "{run}"),
    log:
        "logs/train/{run}-dataset.log",
    wildcard_constraints:
        run=_alternatives(RUN_DATASETS_TO_MAKE),
    conda:
        "../envs/captions.yaml"
    params:
        marker=_SNAPSHOT_MARKER,
        code=code_of_script("sft_run_dataset"),
    message:
        "The dataset run {wildcards.run} trains on (hard links)"
    script:
        "../scripts/sft_run_dataset.py"


rule build_tiny_model:
    output:
        model=directory("results/models/tiny-{family}"),
        provenance=provenance("build_tiny_model", "{family}"),
    log:
        "logs/sft/build_tiny_model-{family}.log",
    benchmark:
        "results/runtime/sft/build_tiny_model-{family}.tsv"
    wildcard_constraints:
        family="qwen2vl|gemma3",
    conda:
        "../envs/train.yaml"
    params:
        seed=0,
        code=code_of_script("build_tiny_model"),
    message:
        "Build the tiny {wildcards.family}-style model locally (random weights, local tokenizer)"
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


rule sft_token_counts:
    input:
        unpack(run_dataset),
        model=lambda wildcards: model_dir(SFT_RUNS[wildcards.run]),
    output:
        part="results/parts/sft_tokens/{run}/{part}.parquet",
    log:
        "logs/train/{run}-token_counts-{part}.log",
    benchmark:
        "results/runtime/train/{run}-token_counts-{part}.tsv"
    wildcard_constraints:
        part=r"\d+",
    conda:
        "../envs/train.yaml"
    params:
        dataset_json=lambda wildcards: run_dataset_json(wildcards.run),
        image_max_pixels=lambda wildcards: SFT_RUNS[wildcards.run]["image_max_pixels"],
        parts=PARTS,
        memo_dir=MEMO_DIR,
        code=code_of_script("sft_token_counts"),
    message:
        "Token counts of run {wildcards.run}'s samples, part {wildcards.part} of {params.parts}"
    script:
        "../scripts/sft_token_counts.py"


rule sft_token_stats:
    input:
        unpack(run_dataset),
        model=lambda wildcards: model_dir(SFT_RUNS[wildcards.run]),
        parts=token_parts,
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
        dataset_json=lambda wildcards: run_dataset_json(wildcards.run),
        # Only what shapes the counts and their summary (on_truncation is applied by sft_train).
        image_max_pixels=lambda wildcards: SFT_RUNS[wildcards.run]["image_max_pixels"],
        cutoff_len=lambda wildcards: SFT_RUNS[wildcards.run]["cutoff_len"],
        memo_dir=MEMO_DIR,
        code=code_of_script("sft_token_stats"),
    message:
        "Token lengths of run {wildcards.run}'s dataset against its cutoff_len"
    script:
        "../scripts/sft_token_stats.py"


rule sft_train:
    input:
        unpack(run_dataset),
        model=lambda wildcards: model_dir(SFT_RUNS[wildcards.run]),
        deepspeed="config/deepspeed",
        token_stats="results/train/{run}/token_lengths.json",
    output:
        adapter=directory("results/train/{run}/adapter"),
        config="results/train/{run}/llamafactory_train.yaml",
        # How the training processes were started (processes, nodes, DeepSpeed, the command).
        launch="results/train/{run}/launch.json",
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
        # Every setting that shapes the model, and nothing else: SLURM resources, prediction
        # settings, evaluate_on or on_truncation never make it retrain.
        dataset_json=lambda wildcards: run_dataset_json(wildcards.run),
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
        **PREDICT_RESOURCES,
    params:
        settings=lambda wildcards: predict_settings_of(wildcards.run),
        dataset_settings=lambda wildcards: SFT_DATASETS[
            SFT_RUNS[wildcards.run]["dataset"]
        ],
        code=code_of_script("predict_sft"),
    message:
        "Run {wildcards.run} answers for every image of {wildcards.evalset}"
    script:
        "../scripts/predict_sft.py"

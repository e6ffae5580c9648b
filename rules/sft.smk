# Supervised fine-tuning: LLaMA-Factory datasets from the valid geo-captions.


rule sft_dataset:
    input:
        manifest="results/manifest.parquet",
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
    log:
        "logs/sft/dataset-{sft_dataset}.log",
    benchmark:
        "results/runtime/sft/dataset-{sft_dataset}.tsv"
    conda:
        "../envs/captions.yaml"
    params:
        captioner=CAPTIONER,
        settings=lambda wildcards: SFT_DATASETS[wildcards.sft_dataset],
        code=code_version("sft.dataset", "ingest", "errors", "workflow"),
    message:
        "LLaMA-Factory dataset {wildcards.sft_dataset} from the {params.captioner} captions"
    script:
        "../scripts/sft_dataset.py"

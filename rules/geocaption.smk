# Geo-captions of the corpus' training images: one process captions them all concurrently on
# the submit host (never one cluster job per image); answers persist in the response store.


localrules:
    geocaption,


rule geocaption:
    input:
        manifest="results/manifest.parquet",
        prompt=f"config/prompts/{CAPTIONS['prompt_version']}.txt",
    output:
        captions=directory(f"{CAPTION_DIR}/captions"),
        index=report(
            f"{CAPTION_DIR}/index.csv",
            category="1. Ingest",
            caption="../report/caption_index.rst",
        ),
        summary=f"{CAPTION_DIR}/summary.json",
        provenance=provenance("geocaption"),
    log:
        f"logs/geocaption/{CAPTIONER}-{CAPTIONS['prompt_version']}.log",
        # Every attempt of every image left without a caption (kept when the job fails).
        failures=f"logs/geocaption/{CAPTIONER}-{CAPTIONS['prompt_version']}.failures.csv",
    benchmark:
        f"results/runtime/geocaption/{CAPTIONER}-{CAPTIONS['prompt_version']}.tsv"
    # After the image features (priority 2, rules/baselines.smk), before the other jobs: the
    # captions, then the dataset, are the longest chain of a rerun.
    priority: 1
    conda:
        "../envs/captions.yaml"
    params:
        captioner=CAPTIONER,
        prompt_version=CAPTIONS["prompt_version"],
        settings=CAPTIONS,
        memo=config["memo"]["dir"],
        code=code_of_script("geocaption"),
    message:
        "Geo-captions with {params.captioner}, prompt {params.prompt_version}"
    script:
        "../scripts/geocaption.py"

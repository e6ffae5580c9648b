# Score every predictor on every eval set (joined on the eval set's manifest: truth and n come
# from it), then one comparison table with paired comparisons and published reference rows.
from geolocsft.evaluation.references import references_file


rule evaluate:
    input:
        predictions="results/predictions/{predictor}/{evalset}.csv",
        manifest=lambda wildcards: manifest_of(dataset_of(wildcards.evalset)),
    output:
        json="results/eval/{predictor}/{evalset}/accuracy.json",
        csv="results/eval/{predictor}/{evalset}/accuracy.csv",
        md=report(
            "results/eval/{predictor}/{evalset}/accuracy.md",
            category="2. Accuracy",
            subcategory="{evalset}",
            caption="../report/accuracy.rst",
            labels={
                "predictor": "{predictor}",
                "eval set": "{evalset}",
                "table": "accuracy",
            },
        ),
        per_image="results/eval/{predictor}/{evalset}/per_image.csv",
        per_country=report(
            "results/eval/{predictor}/{evalset}/per_country.csv",
            category="2. Accuracy",
            subcategory="{evalset}",
            caption="../report/per_country.rst",
            labels={
                "predictor": "{predictor}",
                "eval set": "{evalset}",
                "table": "per country",
            },
        ),
        error_cdf=report(
            "results/eval/{predictor}/{evalset}/error_cdf.png",
            category="3. Plots",
            subcategory="{evalset}",
            caption="../report/error_cdf.rst",
            labels={
                "predictor": "{predictor}",
                "eval set": "{evalset}",
                "plot": "error CDF",
            },
        ),
        world_map=report(
            "results/eval/{predictor}/{evalset}/world_map.png",
            category="3. Plots",
            subcategory="{evalset}",
            caption="../report/world_map.rst",
            labels={
                "predictor": "{predictor}",
                "eval set": "{evalset}",
                "plot": "world map",
            },
        ),
        provenance=provenance("evaluate", "{predictor}", "{evalset}"),
    log:
        "logs/eval/{predictor}-{evalset}.log",
    benchmark:
        "results/runtime/eval/{predictor}-{evalset}.tsv"
    conda:
        "../envs/evaluate.yaml"
    params:
        settings={
            k: v
            for k, v in config["evaluate"].items()
            if k not in ("references", "reference_benchmarks")
        },
        out_dir=lambda wildcards, output: str(Path(output.json).parent),
        code=code_of_script("evaluate"),
    message:
        "Evaluate {wildcards.predictor} on {wildcards.evalset}"
    script:
        "../scripts/evaluate.py"


# The published references table (evaluate.references: the bundled one, a file, or none).
# Relative to the working directory where it lies inside it, so that a moved or copied run
# sees the same input (Snakemake reruns a job whose set of input paths changed).
_references = references_file(config["evaluate"]["references"])
if _references is not None and _references.resolve().is_relative_to(
    Path.cwd().resolve()
):
    _references = _references.resolve().relative_to(Path.cwd().resolve())
REFERENCES = [str(_references)] if _references is not None else []


rule evaluate_summary:
    input:
        accuracy=[f"results/eval/{p}/{e}/accuracy.json" for p, e in EVAL_PAIRS],
        per_image=[f"results/eval/{p}/{e}/per_image.csv" for p, e in EVAL_PAIRS],
        references=REFERENCES,
    output:
        csv="results/eval/summary.csv",
        md=report(
            "results/eval/summary.md",
            category="2. Accuracy",
            caption="../report/summary.rst",
            labels={"table": "all predictors"},
        ),
        paired="results/eval/paired.csv",
        published="results/eval/published.csv",
        provenance=provenance("evaluate_summary"),
    log:
        "logs/eval/summary.log",
    conda:
        "../envs/evaluate.yaml"
    params:
        entries=[{"predictor": p, "evalset": e} for p, e in EVAL_PAIRS],
        baselines=BASELINES,
        settings=config["evaluate"],
        code=code_of_script("evaluate_summary"),
    message:
        "One table of every predictor on every eval set, paired comparisons, published rows"
    script:
        "../scripts/evaluate_summary.py"

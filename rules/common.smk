# Loads and validates the config and the input tables at parse time, and holds the helper
# functions the other rule files use. No rules here.
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SRC_DIR = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC_DIR))
from geolocsft.workflow import use_checkout_package

# Every job (local, conda env, SLURM) runs the package code of this checkout.
use_checkout_package(SRC_DIR)

from geolocsft.captions.stage import captioner_name, gemini_key_variable
from geolocsft.errors import GeolocsftError
from geolocsft.ingest import IMAGE_SUFFIXES, ColumnMap, check_table_columns
from geolocsft.workflow import code_version

validate(config, "../config/schema/config.schema.yaml")

CORPUS = config["corpus"]
BENCHMARKS = config["benchmarks"]
EVAL_SETS = ["holdout", *BENCHMARKS]
CAPTIONS = config["captions"]
if CAPTIONS["backend"] == "gemini":

    # The key comes from the environment only; Snakemake checks it is set before any job and
    # passes it to remote jobs without writing it anywhere.
    envvars:
        gemini_key_variable(),


CAPTIONER = captioner_name(CAPTIONS)
CAPTION_DIR = f"results/geocaptions/{CAPTIONER}/{CAPTIONS['prompt_version']}"
SFT_DATASETS = config["sft"]["datasets"]
BASELINES = config["baselines"]["predictors"]
PREDICTORS = [*BASELINES]


def _check_dataset(label, dataset):
    images = Path(dataset["images"])
    if not images.is_dir():
        raise WorkflowError(f"{label}.images: image folder {images} not found")
    if dataset.get("metadata"):
        try:
            check_table_columns(
                Path(dataset["metadata"]), ColumnMap(**dataset["columns"])
            )
        except GeolocsftError as exc:
            raise WorkflowError(f"{label}.metadata: {exc}") from None


_check_dataset("corpus", CORPUS)
for _name, _dataset in BENCHMARKS.items():
    _check_dataset(f"benchmarks.{_name}", _dataset)


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


wildcard_constraints:
    benchmark=_alternatives(BENCHMARKS),
    dataset=_alternatives(["corpus", *BENCHMARKS]),
    evalset=_alternatives(EVAL_SETS),
    predictor=_alternatives(PREDICTORS),
    sft_dataset=_alternatives(SFT_DATASETS),


def dataset_config(name):
    """The config block of a dataset: 'corpus' or a benchmark name."""
    return CORPUS if name == "corpus" else BENCHMARKS[name]


def dataset_inputs(name):
    """Inputs of a dataset's ingest: its image files and its metadata table, if any."""
    dataset = dataset_config(name)
    folder = Path(dataset["images"])
    inputs = {
        "images": sorted(
            str(p)
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
    }
    if dataset.get("metadata"):
        inputs["metadata"] = dataset["metadata"]
    return inputs


def manifest_of(dataset):
    """The manifest of 'corpus' or of a benchmark."""
    if dataset == "corpus":
        return "results/manifest.parquet"
    return f"results/benchmarks/{dataset}/manifest.parquet"


def dataset_of(evalset):
    """The dataset an eval set's images come from ('holdout' is the corpus' test split)."""
    return "corpus" if evalset == "holdout" else evalset


def eval_outputs(predictor, evalset):
    return f"results/eval/{predictor}/{evalset}"


def all_targets():
    targets = [
        "results/eval/summary.csv",
        "results/eval/summary.md",
        f"{CAPTION_DIR}/index.csv",
    ]
    targets += expand("results/sft/{name}/dataset_info.json", name=SFT_DATASETS)
    targets += expand(
        "results/eval/{predictor}/{evalset}/accuracy.json",
        predictor=PREDICTORS,
        evalset=EVAL_SETS,
    )
    return targets

# Loads and validates the config and the input tables at parse time, and holds the helper
# functions the other rule files use. No rules here.
import functools
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

SRC_DIR = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC_DIR))
from geolocsft.workflow import use_checkout_package

# Every job (local, conda env, SLURM) runs the package code of this checkout.
use_checkout_package(SRC_DIR)

from geolocsft.captions.stage import captioner_name, gemini_key_variable
from geolocsft.sft.models import hub_model_slug
from geolocsft.sft.model_family import tiny_family
from geolocsft.errors import GeolocsftError
from geolocsft.hub.unpacking import ACQUIRED_COLUMNS
from geolocsft.image_folder import combined_digest, listing_digests
from geolocsft.tables import ColumnMap, check_table_columns
from geolocsft.settings import canonical, with_defaults
from geolocsft.workflow import cancel_pending_timers, script_code

# One canonical form (sorted keys, numbers as the schema types them, nested `--config` values,
# which Snakemake passes as text, typed by the schema): config blocks are params, and the same
# configuration in another key order, YAML or --config, must not rerun a job. Defaults are then
# filled by the package's reader of the same schema too, which also fills blocks that a $ref
# points to and named entries (Snakemake's validate does neither).
_typed_config = canonical(None, config)
config.clear()
config.update(_typed_config)
validate(config, "../config/schema/config.schema.yaml")
_canonical_config = canonical(None, with_defaults(None, config))
config.clear()
config.update(_canonical_config)

CORPUS = config["corpus"]
BENCHMARKS = config["benchmarks"]
# Hub datasets fetched and unpacked by rules/acquire.smk (results/acquired/<name>/).
ACQUIRE = config["acquire"]["datasets"]
EVAL_SETS = ["holdout", *BENCHMARKS]
CAPTIONS = config["captions"]
ZERO_SHOT = config["zero_shot"]["predictors"]
if CAPTIONS["backend"] == "gemini" or any(
    p["backend"] == "gemini" for p in ZERO_SHOT.values()
):

    # The key comes from the environment only; Snakemake checks it is set before any job and
    # passes it to remote jobs without writing it anywhere.
    envvars:
        gemini_key_variable(),


CAPTIONER = captioner_name(CAPTIONS)
CAPTION_DIR = f"results/geocaptions/{CAPTIONER}/{CAPTIONS['prompt_version']}"
SFT_DATASETS = config["sft"]["datasets"]
SFT_RUNS = config["sft"]["runs"]
BASELINES = config["baselines"]["predictors"]
PREDICTORS = [*BASELINES, *SFT_RUNS, *ZERO_SHOT]
_clashes = sorted(
    n for n in PREDICTORS if PREDICTORS.count(n) > 1 or n in ("summary", "holdout")
)
if _clashes:
    raise WorkflowError(
        f"predictor names must be unique across baselines, sft.runs and zero_shot.predictors: {_clashes}"
    )


def _run_eval_sets(run):
    chosen = run.get("evaluate_on")
    return EVAL_SETS if chosen is None else [e for e in EVAL_SETS if e in chosen]


def _skipped_gpu_only_runs():
    """Runs whose GPU-only predict backend cannot run here: local jobs and no GPU for torch."""
    gpu_only = [n for n, r in SFT_RUNS.items() if r["predict"]["backend"] == "vllm"]
    if not gpu_only or not config["sft"]["skip_gpu_only_without_gpu"]:
        return []
    if not (workflow.is_main_process and workflow.local_exec):
        return []  # a cluster executor sends them to GPU nodes
    from geolocsft.sft.predict import cuda_available

    if cuda_available():
        return []
    for name in gpu_only:
        logger.warning(
            f"Skipping the predictions of run {name!r}: its predict backend 'vllm' needs a "
            "GPU, and torch sees none on this machine. Run through a cluster profile "
            "(--profile profiles/slurm), set "
            f"sft.runs.{name}.predict.backend: transformers, or set "
            "sft.skip_gpu_only_without_gpu: false to plan them anyway."
        )
    return gpu_only


SKIPPED_GPU_ONLY_RUNS = _skipped_gpu_only_runs()
# Every (predictor, eval set) pair that gets an accuracy table.
EVAL_PAIRS = [(p, e) for p in BASELINES for e in EVAL_SETS] + [
    (name, e)
    for name, run in [*SFT_RUNS.items(), *ZERO_SHOT.items()]
    if name not in SKIPPED_GPU_ONLY_RUNS
    for e in _run_eval_sets(run)
]
for _name, _predictor in ZERO_SHOT.items():
    for _evalset in _predictor.get("evaluate_on") or []:
        if _evalset not in EVAL_SETS:
            raise WorkflowError(
                f"zero_shot.predictors.{_name}.evaluate_on: unknown eval set {_evalset!r}"
            )
for _name, _run in SFT_RUNS.items():
    if _run["dataset"] not in SFT_DATASETS:
        raise WorkflowError(
            f"sft.runs.{_name}.dataset: {_run['dataset']!r} is not in sft.datasets"
        )
    for _evalset in _run.get("evaluate_on") or []:
        if _evalset not in EVAL_SETS:
            raise WorkflowError(
                f"sft.runs.{_name}.evaluate_on: unknown eval set {_evalset!r}"
            )

# Hub models of the runs, by folder name: slug -> (repo id, revision).
HUB_MODELS = {
    hub_model_slug(run["model"], run["revision"]): (run["model"], run["revision"])
    for run in SFT_RUNS.values()
    if tiny_family(run["model"]) is None and not Path(run["model"]).exists()
}


def _check_dataset(label, dataset):
    if dataset.get("acquired"):
        # Its files exist only once acquire_dataset has run: nothing to check on disk yet.
        if dataset["acquired"] not in ACQUIRE:
            raise WorkflowError(
                f"{label}.acquired: {dataset['acquired']!r} is not in acquire.datasets "
                f"(configured: {sorted(ACQUIRE) or 'none'})"
            )
        return
    if "images" not in dataset:
        raise WorkflowError(
            f"{label}: set images (a folder) or acquired (a Hub dataset)"
        )
    images = Path(dataset["images"])
    if not images.is_dir():
        raise WorkflowError(f"{label}.images: image folder {images} not found")
    split_by = config["ingest"]["split_by"]
    if dataset.get("metadata"):
        try:
            check_table_columns(
                Path(dataset["metadata"]),
                ColumnMap(**dataset["columns"]),
                dataset["encoding"],
                # The corpus' split groups come from this column.
                required=[split_by] if split_by and label == "corpus" else [],
            )
        except GeolocsftError as exc:
            raise WorkflowError(f"{label}.metadata: {exc}") from None
    elif split_by and label == "corpus":
        raise WorkflowError(
            f"ingest.split_by: {split_by!r} names a metadata table column, but the corpus has "
            "no metadata table (EXIF GPS); use ingest.split_group_pattern on the ids instead"
        )


if config["ingest"]["split_group_pattern"] is not None:
    try:
        re.compile(config["ingest"]["split_group_pattern"])
    except re.error as exc:
        raise WorkflowError(
            f"ingest.split_group_pattern: not a regular expression: {exc}"
        ) from None
_check_dataset("corpus", CORPUS)
for _name, _dataset in BENCHMARKS.items():
    _check_dataset(f"benchmarks.{_name}", _dataset)


def code_of_script(name):
    """The code version of every package module that scripts/<name>.py runs (a rule's ``code``
    param: a change to any of them reruns the rule; see geolocsft.codegraph)."""
    return script_code(Path(workflow.basedir) / "scripts" / f"{name}.py", SRC_DIR)


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


wildcard_constraints:
    benchmark=_alternatives(BENCHMARKS),
    dataset=_alternatives(["corpus", *BENCHMARKS]),
    evalset=_alternatives(EVAL_SETS),
    predictor=_alternatives(PREDICTORS),
    run=_alternatives(SFT_RUNS),
    model_slug=_alternatives(HUB_MODELS),
    acquired=_alternatives(ACQUIRE),
    sft_dataset=_alternatives(SFT_DATASETS),
    zero_shot=_alternatives(ZERO_SHOT),


def acquired_dir(name):
    """The folder acquire_dataset unpacks the Hub dataset `name` into."""
    return f"results/acquired/{name}"


def dataset_config(name):
    """The config block of a dataset: 'corpus' or a benchmark name. For an acquired dataset,
    its images, metadata and columns are those acquire_dataset writes."""
    dataset = CORPUS if name == "corpus" else BENCHMARKS[name]
    if dataset.get("acquired"):
        folder = acquired_dir(dataset["acquired"])
        return {
            **dataset,
            "images": f"{folder}/images",
            "metadata": f"{folder}/metadata.csv",
            "columns": dict(ACQUIRED_COLUMNS),
            "encoding": "utf-8",
        }
    return dataset


def dataset_inputs(name):
    """Inputs of a dataset's ingest: its metadata table, if any, and never its image files (a
    million paths would cost Snakemake minutes and gigabytes to plan): changes to the images
    reach the jobs through the param `images_digest`. An acquired dataset's inputs are outputs
    of its acquire_dataset job (so ingest runs after it)."""
    dataset = dataset_config(name)
    if dataset.get("acquired"):
        folder = acquired_dir(dataset["acquired"])
        return {"metadata": f"{folder}/metadata.csv", "source": f"{folder}/source.json"}
    return {"metadata": dataset["metadata"]} if dataset.get("metadata") else {}


@functools.cache
def _listing_digests(name):
    dataset = dataset_config(name)
    if dataset.get("acquired"):
        return None  # its source.json (an input) changes whenever its images do
    # The listing is kept in the memo, for the ingest job it makes stale to read (one walk);
    # a dry run writes nothing.
    keep = None if workflow.dryrun else Path(config["memo"]["dir"])
    return listing_digests(Path(dataset["images"]), config["scale_out"]["parts"], keep)


def images_digest(name, part=None):
    """A digest of the listing (relative path, size, mtime) of the dataset's images, of
    one part or of all: a param of the ingest jobs, so that adding, removing or changing an
    image anywhere under the folder reruns them. Computed once per Snakemake run, and only for
    the ingest jobs in the DAG (a stat per image, no read)."""
    digests = _listing_digests(name)
    if digests is None:
        return "acquired"
    if part is not None:
        return digests[part]
    return combined_digest(digests)


def ingest_part_files(name):
    """The part results an ingest job gathers (scale_out.parts > 1), or none."""
    parts = config["scale_out"]["parts"]
    if parts == 1:
        return []
    return [f"results/ingest/parts/{name}/part-{p}.parquet" for p in range(parts)]


def manifest_of(dataset):
    """The manifest of 'corpus' or of a benchmark."""
    if dataset == "corpus":
        return "results/manifest.parquet"
    return f"results/benchmarks/{dataset}/manifest.parquet"


def dataset_of(evalset):
    """The dataset an eval set's images come from ('holdout' is the corpus' test split)."""
    return "corpus" if evalset == "holdout" else evalset


def provenance(rule, *wildcards):
    """The provenance record of a job of `rule` (a declared output; see geolocsft.audit)."""
    key = str(Path(*wildcards)) if wildcards else "job"
    return f"results/audit/provenance/{rule}/{key}.json"


def all_provenance():
    """The provenance record of every job in the DAG of `all`, for the audit manifest."""
    records = [
        provenance("ingest_corpus"),
        provenance("geocaption"),
        provenance("leakage"),
    ]
    records += [provenance("ingest_benchmark", b) for b in BENCHMARKS]
    if config["scale_out"]["parts"] > 1:
        records += [
            provenance("ingest_part", d, str(p))
            for d in ["corpus", *BENCHMARKS]
            for p in range(config["scale_out"]["parts"])
        ]
    acquired = {d.get("acquired") for d in [CORPUS, *BENCHMARKS.values()]} - {None}
    records += [provenance("acquire_dataset", a) for a in sorted(acquired)]
    records += sft_provenance()  # rules/sft.smk
    if "knn" in BASELINES:
        used = {"corpus", *(dataset_of(e) for e in EVAL_SETS)}
        records += [provenance("image_features", d) for d in sorted(used)]
        parts = config["scale_out"]["parts"]
        if parts > 1:
            records += [
                provenance("image_features_part", d, str(p))
                for d in sorted(used)
                for p in range(parts)
            ]
    rule_of = {"medoid": "predict_medoid", "knn": "predict_knn"}
    for predictor, evalset in EVAL_PAIRS:
        if predictor in BASELINES:
            records.append(provenance(rule_of[predictor], evalset))
        elif predictor in SFT_RUNS:
            records.append(provenance("predict_sft", predictor, evalset))
        else:
            records.append(provenance("predict_zero_shot", predictor, evalset))
        records.append(provenance("evaluate", predictor, evalset))
    records.append(provenance("evaluate_summary"))
    return records


def all_targets():
    targets = [
        "results/eval/summary.csv",
        "results/eval/summary.md",
        f"{CAPTION_DIR}/index.csv",
    ]
    targets += expand("results/sft/{name}/dataset_info.json", name=SFT_DATASETS)
    targets += [f"results/eval/{p}/{e}/accuracy.json" for p, e in EVAL_PAIRS]
    # Runs whose predictions are skipped here (GPU-only backend, no GPU) are still trained.
    targets += [f"results/train/{run}/adapter" for run in SKIPPED_GPU_ONLY_RUNS]
    targets.append("results/audit/manifest.json")
    return targets


def feature_threads(most):
    """`threads:` of image_features: `most`, or one when few images are new (not in the memo),
    counted when the job is scheduled (geolocsft.parallel.threads_for_new_items)."""

    def threads(wildcards, input):
        from geolocsft.features import FeatureSettings, new_contents
        from geolocsft.parallel import threads_for_new_items
        from geolocsft.settings import from_config

        settings = from_config(FeatureSettings, FEATURE_SETTINGS)
        new = new_contents(Path(input.manifest), settings, Path(config["memo"]["dir"]))
        return threads_for_new_items(
            most, new, config["scale_out"]["parallel_from_new_items"]
        )

    return threads


def dataset_threads(most):
    """`threads:` of sft_dataset: `most`, or one when few of its images need media prepared or
    captions read (not in the memo), counted when the job is scheduled
    (geolocsft.parallel.threads_for_new_items); with scale_out.parts > 1 the part jobs
    prepare the media."""

    def threads(wildcards, input):
        if not all(
            Path(f).is_file() for f in (input.manifest, input.index, input.excluded)
        ):
            return most  # not made yet: Snakemake asks again when it schedules the job
        import polars as pl

        from geolocsft.leakage import excluded_ids
        from geolocsft.parallel import threads_for_new_items
        from geolocsft.settings import from_config
        from geolocsft.sft.dataset import (
            DATASET_MANIFEST_COLUMNS,
            DatasetSettings,
            new_items,
            read_caption_index,
        )

        name = wildcards.sft_dataset
        settings = from_config(
            DatasetSettings, SFT_DATASETS[name], f"sft.datasets.{name}", name=name
        )
        new = new_items(
            pl.read_parquet(input.manifest, columns=DATASET_MANIFEST_COLUMNS),
            read_caption_index(input.index),
            settings,
            Path(MEMO_DIR),
            excluded_ids(Path(input.excluded)),
        )
        return threads_for_new_items(
            most, new, config["scale_out"]["parallel_from_new_items"]
        )

    return threads

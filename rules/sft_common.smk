# Helpers of the fine-tuning rules (rules/sft.smk): models, datasets, params and SLURM resources
# of the runs. No rules here.
from geolocsft.sft.model_family import tiny_family
from geolocsft.sft.train import WORKFLOW_KEYS

MEMO_DIR = config["memo"]["dir"]
PARTS = config["scale_out"]["parts"]
TINY_FAMILIES = sorted(
    {tiny_family(run["model"]) for run in SFT_RUNS.values()} - {None}
)
# Every run trains on its own view of its dataset, results/train/<run>/dataset/ (hard links made
# by sft_run_dataset): a mirror of results/sft/<dataset>/ for runs that retrain when it changes,
# a snapshot made once for pinned runs. A pinned run whose snapshot exists has no job making it,
# so switching a trained run to pinned (even after images were added) never retrains it.
_SNAPSHOT_MARKER = "dataset_info.json"
PINNED_RUNS = [n for n, r in SFT_RUNS.items() if not r["retrain_when_dataset_changes"]]
RUN_DATASETS_TO_MAKE = [
    n
    for n in SFT_RUNS
    if n not in PINNED_RUNS
    or not Path(f"results/train/{n}/dataset/{_SNAPSHOT_MARKER}").is_file()
]


def model_dir(run):
    """The folder of a run's base model: built, downloaded, or the user's own."""
    family = tiny_family(run["model"])
    if family:
        return f"results/models/tiny-{family}"
    if Path(run["model"]).exists():
        return run["model"]
    return f"results/models/hub/{hub_model_slug(run['model'], run['revision'])}"


def dataset_files(folder, name):
    """The files of a built dataset that training reads."""
    return {
        "json": f"{folder}/{name}.json",
        "info": f"{folder}/dataset_info.json",
        "media": f"{folder}/media",
        "media_index": f"{folder}/media_sha256.parquet",
    }


def run_dataset_dir(name):
    """The dataset folder a run trains on: its own view of its dataset (see above)."""
    return f"results/train/{name}/dataset"


def run_dataset(wildcards):
    """The dataset input of a run's jobs: the run's dataset folder (a directory output:
    Snakemake matches the folder, not the files in it)."""
    return {"snapshot": run_dataset_dir(wildcards.run)}


def run_dataset_sources(wildcards):
    """What a run's dataset folder is made from: the dataset's files; for a pinned run through
    ancient(), so that a newer dataset never remakes its snapshot."""
    run = SFT_RUNS[wildcards.run]
    files = dataset_files(f"results/sft/{run['dataset']}", run["dataset"])
    if run["retrain_when_dataset_changes"]:
        return files
    return {key: ancient(path) for key, path in files.items()}


def run_dataset_json(name):
    """The dataset JSON a run trains on (a param: the path, not the content)."""
    return f"{run_dataset_dir(name)}/{SFT_RUNS[name]['dataset']}.json"


def training_settings(name):
    """The keys of a run that shape its model: all but geolocsft.sft.train.WORKFLOW_KEYS, and
    the Hub revision of its base model."""
    run = SFT_RUNS[name]
    shaping = {k: v for k, v in run.items() if k not in WORKFLOW_KEYS}
    return {**shaping, "revision": run["revision"]}


def predict_settings_of(name):
    """What of a run shapes its predictions (besides its adapter): prediction settings, the
    image resize, the seed, the dataset (target, image preparation)."""
    run = SFT_RUNS[name]
    keys = ("dataset", "predict", "image_max_pixels", "seed", "gpus", "cutoff_len")
    return {k: run[k] for k in keys}


def instruction_of_run(name):
    dataset = SFT_DATASETS[SFT_RUNS[name]["dataset"]]
    return f"config/prompts/{dataset['instruction']}.txt"


# SLURM resources of training and prediction jobs, from each run's `slurm` block, `gpus` and
# `nodes`. A multi-node training asks for its nodes with one task each and per-node GPUs
# (gres), and runs its job script on the first node (`mpi`: no `srun -n1` around it), which
# starts one launcher per node with srun (geolocsft.sft.launch).
SLURM_RESOURCE_DEFAULTS = {
    "gpu": None,  # the run's `gpus`
    "cpus_per_gpu": 8,
    "mem_mb": 64000,
    "runtime": 720,
    "slurm_partition": "gpu",
}
_MULTI_NODE_KEYS = [
    "mpi",
    "tasks",
    "tasks_per_gpu",
    "cpus_per_task",
    "gres",
    "slurm_extra",
]
_SLURM_KEYS = (
    [*SLURM_RESOURCE_DEFAULTS, "nodes"]
    + sorted(
        {k for run in SFT_RUNS.values() for k in run["slurm"]}
        - set(SLURM_RESOURCE_DEFAULTS)
        - set(_MULTI_NODE_KEYS)
    )
    + _MULTI_NODE_KEYS
)


def slurm_resources(run, nodes):
    """The job resources of a run's training (``nodes``: the run's) or prediction (1 node)."""
    chosen = {**SLURM_RESOURCE_DEFAULTS, "gpu": run["gpus"], **run["slurm"]}
    chosen["nodes"] = nodes
    if nodes > 1:
        model = chosen.pop("gpu_model", None)
        per_node = f"gpu:{model}:{run['gpus']}" if model else f"gpu:{run['gpus']}"
        extra = run["slurm"].get("slurm_extra", "")
        chosen |= {
            "gpu": 0,  # --gpus is per job; gres is per node
            "gres": run["slurm"].get("gres", per_node),
            "mpi": "srun",
            "tasks": nodes,
            "tasks_per_gpu": 0,
            "cpus_per_task": run["gpus"] * chosen["cpus_per_gpu"],
            "slurm_extra": f"{extra} --ntasks-per-node=1".strip(),
        }
    return chosen


def _slurm_resource(key, training):
    def value(wildcards):
        run = SFT_RUNS[wildcards.run]
        return slurm_resources(run, run["nodes"] if training else 1).get(key)

    return value


TRAIN_RESOURCES = {key: _slurm_resource(key, True) for key in _SLURM_KEYS}
PREDICT_RESOURCES = {key: _slurm_resource(key, False) for key in _SLURM_KEYS}


def sft_provenance():
    """Provenance records of the fine-tuning jobs (for the audit manifest)."""
    records = [provenance("sft_dataset", d) for d in SFT_DATASETS]
    records += [provenance("build_tiny_model", f) for f in TINY_FAMILIES]
    records += [provenance("download_model", slug) for slug in HUB_MODELS]
    records += [provenance("sft_run_dataset", run) for run in SFT_RUNS]
    records += [provenance("sft_train", run) for run in SFT_RUNS]
    records += [provenance("sft_token_stats", run) for run in SFT_RUNS]
    return records


def media_parts(wildcards):
    if PARTS == 1:
        return []
    return expand(
        "results/parts/sft_media/{d}/{part}.parquet",
        d=wildcards.sft_dataset,
        part=range(PARTS),
    )


def token_parts(wildcards):
    if PARTS == 1:
        return []
    return expand(
        "results/parts/sft_tokens/{run}/{part}.parquet",
        run=wildcards.run,
        part=range(PARTS),
    )

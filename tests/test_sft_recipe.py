"""The paper's training recipe (config/examples/paper.yaml) rendered as the workflow renders it:
the exact LLaMA-Factory YAML, the launch, and the SLURM request of the planned training job.

The job's resources come from Snakemake's own planning of the workflow (its DAG, as
``snakemake -n`` builds it); the sbatch command and the job step from the real functions of
snakemake-executor-plugin-slurm 2.8.0 and -jobstep 0.6.1 that turn resources into flags. What
cannot run here (8 GPUs, two nodes) is not run: README says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO
from test_workflow import copy_workflow

from geolocsft.sft.launch import node_environment, plan_launch
from geolocsft.sft.model_family import resolve_template
from geolocsft.sft.train import RunSettings, render_config

pytestmark = pytest.mark.workflow

RECIPE = REPO / "config" / "examples" / "paper.yaml"
RUNS = {"paper-qwen25vl-7b": "qwen2_5_vl", "paper-gemma3-27b": "gemma3"}
TEMPLATES = {"paper-qwen25vl-7b": "qwen2_vl", "paper-gemma3-27b": "gemma3"}

#: Plans the workflow with Snakemake's API and prints each sft_train job's resources as JSON.
PLAN = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings
workdir, configfiles, targets = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]
with SnakemakeApi(OutputSettings()) as api:
    workflow_api = api.workflow(
        resource_settings=ResourceSettings(cores=8),
        config_settings=ConfigSettings(configfiles=[Path(c) for c in configfiles]),
        snakefile=workdir / "Snakefile",
        workdir=workdir,
    )
    dag_api = workflow_api.dag(dag_settings=DAGSettings(targets=set(targets)))
    workflow = dag_api.workflow_api._workflow
    workflow._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True)
    workflow._build_dag()
    jobs = {
        job.wildcards["run"]: dict(job.resources.items())
        for job in workflow.dag.jobs
        if job.rule.name == "sft_train"
    }
print("PLANNED " + json.dumps(jobs))
"""


def recipe_runs() -> dict:
    return yaml.safe_load(RECIPE.read_text())["sft"]["runs"]


@pytest.mark.parametrize("name", list(RUNS))
def test_the_recipe_renders_the_papers_llamafactory_yaml(name, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": RUNS[name]}))
    run = RunSettings.from_config(name, recipe_runs()[name])
    config = render_config(
        run,
        model_path=model,
        dataset_dir=tmp_path / "sft" / "geocaptions",
        output_dir=tmp_path / "checkpoints",
        deepspeed_dir=REPO / "config" / "deepspeed",
        template=resolve_template(run.template, model, name),
        has_validation=False,
        resume_from=None,
    )
    assert {k: config[k] for k in ("stage", "finetuning_type", "template", "dataset")} == {
        "stage": "sft",
        "finetuning_type": "lora",
        "template": TEMPLATES[name],
        "dataset": "geocaptions",
    }
    assert config["num_train_epochs"] == 3 and config["learning_rate"] == 2.0e-5
    assert config["lr_scheduler_type"] == "cosine" and config["warmup_ratio"] == 0.1
    assert config["cutoff_len"] == 10000 and config["bf16"] is True
    assert config["lora_rank"] == 16 and config["lora_target"] == "all"
    deepspeed = json.loads(Path(config["deepspeed"]).read_text())
    assert deepspeed["zero_optimization"]["stage"] == 3
    launch = plan_launch(
        name,
        config=tmp_path / "llamafactory_train.yaml",
        gpus=run.gpus,
        nodes=run.nodes,
        device=run.device,
        deepspeed=bool(run.deepspeed),
        bf16=run.bf16,
        gpus_here=8,
    )
    env = node_environment(launch, {"SLURM_JOB_ID": "77"})
    assert env["NPROC_PER_NODE"] == "8" and env["FORCE_TORCHRUN"] == "1"
    assert "DS_ACCELERATOR" not in env and "CUDA_VISIBLE_DEVICES" not in env


def planned_resources(workdir: Path, configfiles: list[Path], targets: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["GEMINI_API_KEY"] = "planning-only"  # the recipe captions with Gemini; nothing is sent
    result = subprocess.run(
        [sys.executable, "-c", PLAN, str(workdir), ",".join(map(str, configfiles)), *targets],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("PLANNED ")]
    return json.loads(line.removeprefix("PLANNED "))


class _Resources(dict):
    """Snakemake's job resources as the plugins read them (``.get`` and attributes)."""

    def __getattr__(self, name: str) -> object:
        return self[name]


def sbatch_of(resources: dict) -> str:
    """The sbatch command snakemake-executor-plugin-slurm builds for a job with ``resources``."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=_Resources(resources), threads=resources["_cores"])
    params = {
        "run_uuid": "geolocsft_test",
        "slurm_logfile": "log",
        "comment_str": "rule_sft_train",
        "account": "",
        "partition": f"-p {resources['slurm_partition']}",
        "workdir": "/work",
    }
    return get_submit_command(job, params) + set_gres_string(job)


def test_the_recipe_plans_one_node_of_8_gpus_and_two_nodes_when_asked(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    two_nodes = tmp_path / "two-nodes.yaml"
    two_nodes.write_text(yaml.safe_dump({"sft": {"runs": {"paper-gemma3-27b": {"nodes": 2}}}}))
    targets = [f"results/train/{name}/adapter" for name in RUNS]
    one = planned_resources(workdir, [RECIPE], targets)
    both = planned_resources(workdir, [RECIPE, two_nodes], targets)

    sbatch = sbatch_of(one["paper-qwen25vl-7b"]).split()
    for flag in ("-p", "gpu", "-t", "1440", "--mem", "480000", "--nodes=1"):
        assert flag in sbatch, (flag, sbatch)
    assert "--gpus=a100:8" in sbatch and "--cpus-per-gpu=8" in sbatch
    assert not any(f.startswith("--ntasks") for f in sbatch)  # one task: the job itself
    # The job step: one `srun -n1` around the job (the jobstep plugin's default).
    assert "mpi" not in one["paper-qwen25vl-7b"]

    sbatch = sbatch_of(both["paper-gemma3-27b"]).split()
    for flag in ("--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--gres=gpu:a100:8"):
        assert flag in sbatch, (flag, sbatch)
    assert "--cpus-per-task=64" in sbatch  # the node's 8 GPUs x 8 CPUs, for its one task
    assert not any(f.startswith("--gpus") for f in sbatch)  # --gpus would be per job, not node
    # With `mpi`, the jobstep plugin runs the job script itself on the first node (no srun -n1),
    # and the script starts one launcher per node (geolocsft.sft.launch.srun_command).
    assert "mpi" in both["paper-gemma3-27b"]
    assert sbatch_of(both["paper-qwen25vl-7b"]) == sbatch_of(one["paper-qwen25vl-7b"])

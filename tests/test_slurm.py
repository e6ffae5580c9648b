"""The demo workflow on a real one-node SLURM cluster, through the SLURM profiles.

.ci/slurm/start.sh installs (apt-get, once) and starts munged, slurmctld and slurmd with a `cpu`
and a `gpu` partition and one fake GPU; the test runs the whole demo DAG with
`snakemake --profile profiles/slurm --profile profiles/slurm-ci` and checks, from SLURM's own
records, that every non-local job went through sbatch to the right partition. Needs root and
apt-get (Debian/Ubuntu); skipped otherwise, or with GEOLOCSFT_SKIP_SLURM=1.
GEOLOCSFT_REQUIRE_SLURM=1 turns those skips into failures (for CI machines that must run it).
About 3-4 minutes, most of it the demo's own CPU work (building and training the tiny model).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import REPO
from test_workflow import SNAKEMAKE, copy_workflow

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

START = REPO / ".ci" / "slurm" / "start.sh"
STOP = REPO / ".ci" / "slurm" / "stop.sh"
STATE_DIR = Path(os.environ.get("GEOLOCSFT_SLURM_DIR", "/tmp/geolocsft-slurm"))
CANNOT_HAVE_SLURM = 77  # start.sh: not root, or the packages cannot be installed


def _skip(reason: str) -> None:
    if os.environ.get("GEOLOCSFT_REQUIRE_SLURM") == "1":
        pytest.fail(f"GEOLOCSFT_REQUIRE_SLURM=1 but: {reason}")
    pytest.skip(reason)


def _clean_env() -> dict[str, str]:
    """The environment without anything that could point SLURM tools at another cluster."""
    return {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONPATH" and not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))
    }


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Path]:
    """A running one-node cluster; stopped at the end if this fixture started it."""
    if os.environ.get("GEOLOCSFT_SKIP_SLURM") == "1":
        pytest.skip("GEOLOCSFT_SKIP_SLURM=1")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.fail("snakemake-executor-plugin-slurm is missing: `make install` installs it")
    if os.geteuid() != 0:
        _skip("the SLURM test needs root (it installs and starts munge and SLURM)")
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(START), str(STATE_DIR)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    if result.returncode == CANNOT_HAVE_SLURM:
        _skip(f"no SLURM here: {output.strip().splitlines()[-1]}")
    assert result.returncode == 0, f".ci/slurm/start.sh failed:\n{output}"
    print(f"\nSLURM cluster ready in {time.monotonic() - started:.1f} s\n{result.stdout}")
    yield STATE_DIR
    if "starting slurmctld" in output or "starting slurmd" in output:
        subprocess.run(["bash", str(STOP), str(STATE_DIR)], check=False, timeout=120)


def _slurm_job(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (finished jobs stay listed for MinJobAge = 1 h)."""
    shown = subprocess.run(
        ["scontrol", "--oneliner", "show", "job", job_id],
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", shown))


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster: Path, tmp_path_factory: pytest.TempPathFactory):
    """The demo workflow run once through the SLURM profiles; tests below read its records."""
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm-demo"))
    started = time.monotonic()
    result = subprocess.run(
        [str(SNAKEMAKE), "--profile", "profiles/slurm", "--profile", "profiles/slurm-ci"],
        cwd=workdir,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=1200,
        stdin=subprocess.DEVNULL,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"snakemake on SLURM failed:\n{log}"
    print(f"\ndemo DAG on SLURM: {time.monotonic() - started:.1f} s")
    # "Job 7 has been submitted with SLURM jobid 12 (log: .../slurm_logs/rule_x/.../12.log)."
    submitted = re.findall(
        r"has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.?$", log, re.M
    )
    jobs = {job_id: {"log": Path(path), **_slurm_job(job_id)} for job_id, path in submitted}
    return workdir, log, jobs


def _by_comment(jobs: dict[str, dict], prefix: str) -> list[dict]:
    return [job for job in jobs.values() if job.get("Comment", "").startswith(prefix)]


def test_every_cluster_job_went_through_sbatch_and_completed(slurm_run, slurm_cluster):
    workdir, _log, jobs = slurm_run
    # Three groups (ingest, baselines, evaluate) and five single jobs; the network rule
    # geocaption, the run's dataset folder (hard links), the audit manifest and the target `all`
    # are local rules and never reach SLURM.
    comments = sorted(job["Comment"] for job in jobs.values())
    assert len(comments) == 8, comments
    for prefix in (
        "rule_ingest_",
        "rule_baselines_",
        "rule_evaluate_",
        "rule_sft_dataset_",
        "rule_sft_token_stats_",
        "rule_build_tiny_model",
        "rule_sft_train_",
        "rule_predict_sft_",
    ):
        assert len(_by_comment(jobs, prefix)) == 1, (prefix, comments)
    assert not any(
        c.startswith(("rule_geocaption", "rule_sft_run_dataset", "rule_audit_manifest", "rule_all"))
        for c in comments
    )
    controller_log = (slurm_cluster / "log" / "slurmctld.log").read_text()
    for job_id, job in jobs.items():
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
        assert Path(job["WorkDir"]) == workdir and job["JobName"].startswith("geolocsft_")
        assert f"_job_complete: JobId={job_id} done" in controller_log
        # The plugin's per-job log, kept by slurm-keep-successful-logs.
        assert job["log"].is_file() and job["log"].is_relative_to(workdir / ".snakemake")


def test_cpu_rules_are_grouped_and_gpu_rules_get_a_gpu(slurm_run):
    _workdir, _log, jobs = slurm_run
    (train,) = _by_comment(jobs, "rule_sft_train_")
    (predict,) = _by_comment(jobs, "rule_predict_sft_")
    for job in (train, predict):
        # Resources of the run `tiny-demo` (rules/common.smk defaults): -p gpu --gpus=1.
        assert job["Partition"] == "gpu" and job.get("TresPerJob") == "gres:gpu:1", job
    for prefix in ("rule_ingest_", "rule_baselines_", "rule_evaluate_", "rule_sft_dataset_"):
        (job,) = _by_comment(jobs, prefix)
        assert job["Partition"] == "cpu" and "gpu" not in job.get("TresPerJob", ""), job
    (evaluate,) = _by_comment(jobs, "rule_evaluate_")
    # One SLURM job ran all three evaluations and the summary (slurm log of the group job).
    group_log = evaluate["log"].read_text()
    assert group_log.count("Finished jobid") >= 4 and "evaluate_summary" in group_log
    # Per-rule resources of profiles/slurm (set-resources) reached sbatch.
    wanted = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    wanted = wanted["set-resources"]["sft_dataset"]
    (dataset,) = _by_comment(jobs, "rule_sft_dataset_")
    assert dataset["MinMemoryNode"] == f"{wanted['mem_mb']}M", dataset
    hours, minutes = divmod(wanted["runtime"], 60)
    assert dataset["TimeLimit"] == f"{hours:02d}:{minutes:02d}:00", dataset


def test_results_are_those_of_the_demo(slurm_run):
    workdir, _log, _jobs = slurm_run
    summary = pl.read_csv(workdir / "results" / "eval" / "summary.csv")
    assert summary["predictor"].to_list() == ["medoid", "knn", "tiny-demo"]
    assert (workdir / "results" / "train" / "tiny-demo" / "adapter").is_dir()
    for rule_log in ("ingest/corpus.log", "eval/summary.log", "train/tiny-demo.log"):
        assert (workdir / "logs" / rule_log).is_file()


def test_sharded_stages_run_as_separate_slurm_jobs(slurm_cluster: Path, tmp_path: Path):
    """scale_out.parts: 2 -> every sharded per-image stage (ingest checks, dataset media, kNN
    features, token counts) runs as two part jobs through sbatch, and each gathering job's output
    holds every image of its parts."""
    workdir = copy_workflow(tmp_path / "wf")
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["scale_out"] = {"parts": 2}
    (workdir / "config" / "parts.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [
            str(SNAKEMAKE),
            "--profile",
            "profiles/slurm",
            "--profile",
            "profiles/slurm-ci",
            # targets before --configfile, which takes every argument after it
            "results/manifest.parquet",
            "results/sft/geocaptions/dataset_info.json",
            "results/baselines/features/corpus.parquet",
            "results/train/tiny-demo/token_lengths.json",
            "--configfile",
            "config/parts.yaml",
        ],
        cwd=workdir,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"snakemake on SLURM failed:\n{log}"
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    jobs = {job_id: _slurm_job(job_id) for job_id in submitted}
    comments = sorted(job["Comment"] for job in jobs.values())
    for part_rule in ("ingest_part", "sft_media", "image_features_part", "sft_token_counts"):
        assert len(_by_comment(jobs, f"rule_{part_rule}_")) == 2, (part_rule, comments)
    for job in jobs.values():
        assert job["JobState"] == "COMPLETED", job
    manifest = pl.read_parquet(workdir / "results" / "manifest.parquet")
    parts = [
        pl.read_parquet(workdir / f"results/ingest/parts/corpus/part-{k}.parquet") for k in (0, 1)
    ]
    assert manifest.height == 20 == sum(p.height for p in parts)
    excluded = set(pl.read_csv(workdir / "results/leakage/train_excluded.csv")["image_id"])
    trained = set(manifest.filter(pl.col("split") == "train")["image_id"]) - excluded
    media = pl.concat(
        pl.read_parquet(workdir / f"results/parts/sft_media/geocaptions/{k}.parquet")
        for k in (0, 1)
    )
    stats = yaml.safe_load((workdir / "results/sft/geocaptions/stats.json").read_text())
    assert set(media["image_id"]) == trained and stats["samples"] == len(trained)
    features = pl.read_parquet(workdir / "results/baselines/features/corpus.parquet")
    assert set(features["image_id"]) == set(manifest["image_id"])
    tokens = pl.concat(
        pl.read_parquet(workdir / f"results/parts/sft_tokens/tiny-demo/{k}.parquet") for k in (0, 1)
    )
    assert tokens.height == len(trained)

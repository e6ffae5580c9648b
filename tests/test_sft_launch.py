"""How a run's training is launched: processes, torchrun, DeepSpeed, devices, nodes, SLURM.

These check the launch the rule builds (environment, commands, refusals) without training;
tests/test_sft_distributed.py runs the same launches with the real llamafactory-cli.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geolocsft.errors import GeolocsftError
from geolocsft.sft.launch import (
    first_host,
    node_command,
    node_environment,
    plan_launch,
    read_launch,
    run_process_group,
    running_trainings,
    srun_command,
    write_launch,
)


def launch(**changes: object):
    options = {
        "config": Path("/runs/r/llamafactory_train.yaml"),
        "gpus": 1,
        "nodes": 1,
        "device": "auto",
        "deepspeed": False,
        "bf16": False,
        "gpus_here": 0,
    }
    return plan_launch("r", **{**options, **changes})


def test_gpus_always_sets_the_processes_per_node_and_deepspeed_always_uses_torchrun():
    one_gpu = launch(gpus=1, gpus_here=4, bf16=True)
    env = node_environment(one_gpu, {})
    # On a node with 4 GPUs, gpus: 1 trains one process (LLaMA-Factory would start 4).
    assert env["NPROC_PER_NODE"] == "1" and "FORCE_TORCHRUN" not in env
    deepspeed = node_environment(launch(gpus=1, gpus_here=1, deepspeed=True, bf16=True), {})
    assert deepspeed["FORCE_TORCHRUN"] == "1" and deepspeed["NPROC_PER_NODE"] == "1"
    assert "DS_ACCELERATOR" not in deepspeed  # GPU nodes: DeepSpeed picks cuda itself
    four = node_environment(launch(gpus=4, gpus_here=8, bf16=True), {})
    assert four["FORCE_TORCHRUN"] == "1" and four["NPROC_PER_NODE"] == "4"
    assert four["NNODES"] == "1" and "MASTER_ADDR" not in four and "MASTER_PORT" not in four
    assert four["HF_HUB_OFFLINE"] == "1"
    assert four["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_cpu_runs_refuse_gpu_only_settings_unless_they_target_the_cpu():
    with pytest.raises(GeolocsftError, match="bf16 needs a GPU"):
        launch(bf16=True)
    with pytest.raises(GeolocsftError, match=r"DeepSpeed needs a GPU.*device: cpu"):
        launch(deepspeed=True)
    with pytest.raises(GeolocsftError, match="device: gpu, but torch sees no GPU"):
        launch(device="gpu")
    with pytest.raises(GeolocsftError, match="gpus: 4 per node, but torch sees only 2"):
        launch(gpus=4, gpus_here=2)
    on_purpose = launch(device="cpu", deepspeed=True, gpus=2, gpus_here=8, threads=2)
    env = node_environment(on_purpose, {})
    assert on_purpose.device == "cpu" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["DS_ACCELERATOR"] == "cpu" and env["FORCE_TORCHRUN"] == "1"
    assert env["NPROC_PER_NODE"] == "2" and env["OMP_NUM_THREADS"] == "1"
    with pytest.raises(GeolocsftError, match="space in its path"):
        launch(gpus=2, config=Path("/my runs/r/llamafactory_train.yaml"))
    cpu_ddp = node_environment(launch(gpus=2), {})  # auto on a CPU machine: 2 CPU processes
    assert cpu_ddp["FORCE_TORCHRUN"] == "1" and cpu_ddp["NPROC_PER_NODE"] == "2"


def test_multi_node_environment_from_real_slurm_variables():
    two_nodes = launch(gpus=8, nodes=2, gpus_here=8, bf16=True)
    # What srun sets in the task it starts on the second node of job 4242.
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_PROCID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }
    env = node_environment(two_nodes, slurm)
    assert env["NNODES"] == "2" and env["NODE_RANK"] == "1" and env["NPROC_PER_NODE"] == "8"
    assert env["MASTER_ADDR"] == "gpu07" and env["FORCE_TORCHRUN"] == "1"
    assert env["MASTER_PORT"] == str(20000 + 4242 % 20000)
    first = node_environment(two_nodes, {**slurm, "SLURM_NODEID": "0", "SLURM_PROCID": "0"})
    assert first["NODE_RANK"] == "0" and first["MASTER_PORT"] == env["MASTER_PORT"]
    with pytest.raises(GeolocsftError, match="allocation has 1"):
        node_environment(two_nodes, {**slurm, "SLURM_NNODES": "1"})
    # By hand, without SLURM: the rank and rendezvous come from the environment.
    manual = {"NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}
    env = node_environment(two_nodes, manual)
    assert (env["NODE_RANK"], env["MASTER_ADDR"], env["MASTER_PORT"]) == ("1", "127.0.0.1", "29511")
    with pytest.raises(GeolocsftError, match="needs each node's rank"):
        node_environment(two_nodes, {"MASTER_ADDR": "x"})


def test_multi_node_job_starts_one_node_command_per_node(tmp_path):
    two_nodes = launch(config=tmp_path / "llamafactory_train.yaml", gpus=4, nodes=2, gpus_here=4)
    launch_file = tmp_path / "launch.json"
    write_launch(two_nodes, launch_file)
    assert read_launch(launch_file) == two_nodes
    command = srun_command(two_nodes, launch_file)
    assert command[:5] == [
        "srun",
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
    ]
    assert command[5:] == node_command(launch_file)
    assert node_command(launch_file) == [
        sys.executable,
        "-m",
        "geolocsft.sft.launch",
        str(launch_file),
    ]


def test_first_host_without_scontrol():
    assert first_host("node17") == "node17"
    assert first_host("gpu[01-04],gpu07") == "gpu01"


def test_a_stopped_launch_stops_every_process_it_started(tmp_path):
    """SIGTERM to the launcher reaches every process of the training: torchrun starts its
    workers in sessions of their own (here: ``child.py`` starts such a worker)."""
    marker = tmp_path / "llamafactory_train.yaml"
    child = tmp_path / "child.py"
    child.write_text(
        "import subprocess, sys\n"
        "worker = [sys.executable, '-c', 'import time; time.sleep(120)', sys.argv[1]]\n"
        "subprocess.run(worker, start_new_session=True)\n"
    )
    parent = tmp_path / "parent.py"
    parent.write_text(
        "import sys\n"
        "from geolocsft.sft.launch import run_process_group\n"
        "raise SystemExit(run_process_group([sys.executable, sys.argv[1], sys.argv[2]], {}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    launcher = subprocess.Popen([sys.executable, str(parent), str(child), str(marker)], env=env)
    deadline = time.monotonic() + 30
    started: list[int] = []
    while len(started) < 2 and time.monotonic() < deadline:  # child.py and its worker
        time.sleep(0.2)
        started = [p for p in running_trainings(marker) if p != launcher.pid]
    assert len(started) == 2, started
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while running_trainings(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running_trainings(marker) == [], f"{started} survived"
    assert run_process_group([sys.executable, "-c", "raise SystemExit(3)"], os.environ) == 3

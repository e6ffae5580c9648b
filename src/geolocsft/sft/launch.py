"""How ``llamafactory-cli train`` is started: one process, torchrun on a node, or one launcher
per SLURM node.

:func:`plan_launch` decides from a run's settings and the machine:

* ``gpus: N`` is always ``NPROC_PER_NODE=N`` (N training processes per node: GPUs, or on a CPU
  run N CPU processes that talk over gloo); torchrun (``FORCE_TORCHRUN=1``) whenever N > 1,
  nodes > 1 or DeepSpeed is used (LLaMA-Factory refuses DeepSpeed without torchrun, also with
  one process).
* ``device``: ``auto`` trains on the GPUs torch sees, else on the CPU with the GPU-only options
  (bf16, DeepSpeed) refused; ``gpu`` requires GPUs; ``cpu`` trains on the CPU on purpose (GPUs
  hidden), where DeepSpeed runs with its CPU accelerator (``DS_ACCELERATOR=cpu``, gloo) and bf16
  is refused.
* ``nodes: M > 1`` needs a SLURM allocation of M nodes (``--nodes=M``, one task per node): the
  job runs on the first node and starts the node command on every node with
  ``srun --nodes=M --ntasks-per-node=1``; each node's rank is its ``SLURM_NODEID`` and the
  rendezvous is the first host of ``SLURM_JOB_NODELIST``.

The node command is ``python -m geolocsft.sft.launch <run_dir>/launch.json``: it sets the
environment of :func:`node_environment` and runs ``llamafactory-cli train`` on the rendered YAML.
Started by hand on two machines with ``NNODES=2``, ``NODE_RANK=0/1``, ``MASTER_ADDR`` and
``MASTER_PORT`` it trains the same run without SLURM (the tests do this on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from geolocsft.errors import GeolocsftError
from geolocsft.io import atomic_write_json

log = logging.getLogger(__name__)

Device = Literal["auto", "gpu", "cpu"]
#: Environment of every training process: models and data are local, nothing is downloaded.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DISABLE_VERSION_CHECK": "0",
}
DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class Launch:
    """How a run's training processes are started (written to ``launch.json``)."""

    config: str
    processes_per_node: int
    nodes: int
    device: Literal["cuda", "cpu"]
    deepspeed: bool
    torchrun: bool
    #: CPU threads of the job on each node (a CPU run's processes share them).
    threads: int = 1

    def shape(self) -> dict[str, object]:
        """What of the launch shapes the weights (world size, device, DeepSpeed)."""
        return {
            "processes_per_node": self.processes_per_node,
            "nodes": self.nodes,
            "device": self.device,
            "deepspeed": self.deepspeed,
        }


def plan_launch(
    run: str,
    *,
    config: Path,
    gpus: int,
    nodes: int,
    device: Device,
    deepspeed: bool,
    bf16: bool,
    gpus_here: int,
    threads: int = 1,
) -> Launch:
    """The launch of run ``run`` on this machine, or a clear error for settings it cannot run."""
    where = f"sft.runs.{run}"
    if device == "cpu":
        resolved: Literal["cuda", "cpu"] = "cpu"
    elif gpus_here:
        resolved = "cuda"
    elif device == "gpu":
        raise GeolocsftError(
            f"{where}: device: gpu, but torch sees no GPU on this machine; run it on a GPU node "
            "(--profile profiles/slurm) or set device: cpu"
        )
    else:
        resolved = "cpu"
    if resolved == "cpu" and bf16:
        raise GeolocsftError(
            f"{where}: bf16 needs a GPU and this run trains on the CPU (device: {device}, GPUs "
            "visible to torch: 0); set bf16: false for a CPU run, or run it on a GPU node with "
            "--profile profiles/slurm"
        )
    if resolved == "cpu" and deepspeed and device != "cpu":
        raise GeolocsftError(
            f"{where}: DeepSpeed needs a GPU and torch sees none here; run it on a GPU node "
            "(--profile profiles/slurm), or set device: cpu to train with DeepSpeed's CPU "
            "accelerator on purpose (slow; for tests)"
        )
    if resolved == "cuda" and gpus > gpus_here:
        raise GeolocsftError(
            f"{where}: gpus: {gpus} per node, but torch sees only {gpus_here} GPU(s) on this "
            "node; lower gpus or ask SLURM for more (sft.runs.<run>.slurm)"
        )
    torchrun = gpus > 1 or nodes > 1 or deepspeed
    if torchrun and any(c.isspace() for c in str(config)):
        raise GeolocsftError(
            f"{where}: {config} has a space in its path, and LLaMA-Factory's torchrun launch "
            "splits its command line on spaces; run the workflow from a folder without spaces"
        )
    return Launch(
        config=str(config),
        processes_per_node=gpus,
        nodes=nodes,
        device=resolved,
        deepspeed=deepspeed,
        torchrun=torchrun,
        threads=max(1, threads),
    )


def first_host(nodelist: str) -> str:
    """The first host of a SLURM nodelist (``gpu[01-04],gpu07`` → ``gpu01``)."""
    try:
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        if hosts:
            return hosts[0]
    except (OSError, subprocess.CalledProcessError):
        pass
    match = re.match(r"([^\[,]+)(?:\[([0-9]+))?", nodelist)
    return (match.group(1) + (match.group(2) or "")) if match else nodelist


def master_port(environ: Mapping[str, str]) -> str:
    """The rendezvous port: ``MASTER_PORT``, else one derived from the SLURM job id (two jobs
    sharing a node do not collide), else 29500."""
    if environ.get("MASTER_PORT"):
        return environ["MASTER_PORT"]
    job = environ.get("SLURM_JOB_ID")
    if job and job.isdigit():
        return str(20000 + int(job) % 20000)
    return str(DEFAULT_MASTER_PORT)


def node_environment(launch: Launch, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment ``llamafactory-cli train`` gets on one node (added to ``environ``)."""
    env = dict(OFFLINE_ENVIRONMENT)
    env["NPROC_PER_NODE"] = str(launch.processes_per_node)
    env["NNODES"] = str(launch.nodes)
    if launch.torchrun:
        env["FORCE_TORCHRUN"] = "1"
    if launch.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        # The job's threads, shared by its processes: more threads than cores makes gloo and
        # the tiny matrices of a CPU run many times slower on a busy machine.
        env["OMP_NUM_THREADS"] = str(max(1, launch.threads // launch.processes_per_node))
        if launch.deepspeed:
            env["DS_ACCELERATOR"] = "cpu"
    # torchrun is looked up on PATH: the one beside this Python (the venv's) first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", "")])
    if launch.nodes > 1:
        slurm_nodes = environ.get("SLURM_NNODES") or environ.get("SLURM_JOB_NUM_NODES")
        if slurm_nodes and int(slurm_nodes) != launch.nodes:
            raise GeolocsftError(
                f"the run trains on {launch.nodes} nodes but the SLURM allocation has "
                f"{slurm_nodes}: the job must be submitted with --nodes={launch.nodes}"
            )
        rank = environ.get("SLURM_NODEID", environ.get("NODE_RANK"))
        if rank is None:
            raise GeolocsftError(
                f"a {launch.nodes}-node run needs each node's rank: run it inside a SLURM "
                "allocation (srun sets SLURM_NODEID) or set NODE_RANK, MASTER_ADDR and "
                "MASTER_PORT on every node"
            )
        env["NODE_RANK"] = rank
        nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
        if environ.get("MASTER_ADDR"):
            env["MASTER_ADDR"] = environ["MASTER_ADDR"]
        elif nodelist:
            env["MASTER_ADDR"] = first_host(nodelist)
        else:
            raise GeolocsftError(
                "a multi-node run needs MASTER_ADDR (or SLURM_JOB_NODELIST) on every node"
            )
        env["MASTER_PORT"] = master_port(environ)
    elif launch.torchrun and (environ.get("MASTER_PORT") or environ.get("SLURM_JOB_ID")):
        # Otherwise LLaMA-Factory picks a free port on 127.0.0.1 itself.
        env["MASTER_ADDR"] = "127.0.0.1"
        env["MASTER_PORT"] = master_port(environ)
    return env


def llamafactory_cli() -> str:
    """Path of ``llamafactory-cli`` next to this Python (the venv's), or on PATH."""
    beside = Path(sys.executable).with_name("llamafactory-cli")
    found = str(beside) if beside.exists() else shutil.which("llamafactory-cli")
    if not found:
        raise GeolocsftError(
            "llamafactory-cli is not installed: pip install -c constraints.txt 'geolocsft[train]'"
        )
    return found


def node_command(launch_file: Path) -> list[str]:
    """The command that trains on one node (the same on every node)."""
    return [sys.executable, "-m", "geolocsft.sft.launch", str(launch_file)]


def srun_command(launch: Launch, launch_file: Path) -> list[str]:
    """One node command per allocated node, started by srun inside the SLURM job."""
    return [
        "srun",
        f"--nodes={launch.nodes}",
        f"--ntasks={launch.nodes}",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        *node_command(launch_file),
    ]


def write_launch(launch: Launch, path: Path) -> None:
    atomic_write_json(path, asdict(launch))


def read_launch(path: Path) -> Launch:
    try:
        return Launch(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise GeolocsftError(f"{path}: not a readable launch file ({exc})") from None


def run_process_group(
    command: Sequence[str], env: Mapping[str, str], output: Path | None = None
) -> int:
    """Run ``command`` and wait; SIGTERM/SIGINT to this process, or an error here, are passed on
    to every process it started (torchrun runs its workers in sessions of their own, and a
    signal to ``llamafactory-cli`` alone leaves torchrun and the workers training)."""
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(Path(output).open("a", encoding="utf-8")) if output else None
        process = subprocess.Popen(
            list(command),
            env=dict(env),
            stdout=sink,
            stderr=subprocess.STDOUT if sink else None,
        )

        def forward(signum: int, _frame: object) -> None:
            _signal_tree(process.pid, signum)
            raise SystemExit(128 + signum)

        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return process.wait()
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            if process.poll() is None:
                _signal_tree(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    _signal_tree(process.pid, signal.SIGKILL)
                    process.wait()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_tree(pid: int, signum: int) -> None:
    for target in [*descendants(pid), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signum)


def running_trainings(config: Path) -> list[int]:
    """Processes (other than this one) whose command line holds ``config``: trainings of the
    run still alive, e.g. torchrun workers a killed job left behind (they run in their own
    sessions and keep writing checkpoints)."""
    needle = str(config).encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) != os.getpid() and needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return sorted(found)


def train_on_node(launch: Launch, environ: Mapping[str, str]) -> int:
    """Run ``llamafactory-cli train`` on this node (its output goes to this process's)."""
    env = {**environ, **node_environment(launch, environ)}
    command = [llamafactory_cli(), "train", launch.config]
    shown = {k: env[k] for k in sorted(env) if k in _SHOWN}
    log.info("running %s with %s", " ".join(command), shown)
    sys.stdout.flush()
    return run_process_group(command, env)


_SHOWN = frozenset(
    {
        "NPROC_PER_NODE",
        "NNODES",
        "NODE_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "FORCE_TORCHRUN",
        "DS_ACCELERATOR",
        "CUDA_VISIBLE_DEVICES",
        "OMP_NUM_THREADS",
    }
)


def launch_training(
    launch: Launch, launch_file: Path, log_path: Path | None, environ: Mapping[str, str]
) -> int:
    """Start the training of a run: here, or on every node of the SLURM allocation."""
    if launch.nodes > 1:
        if not environ.get("SLURM_JOB_ID"):
            raise GeolocsftError(
                f"a {launch.nodes}-node run is started by SLURM (snakemake --profile "
                "profiles/slurm asks for the nodes); without SLURM start "
                f"'{' '.join(node_command(launch_file))}' on each node with NNODES, NODE_RANK, "
                "MASTER_ADDR and MASTER_PORT set"
            )
        command = srun_command(launch, launch_file)
    else:
        command = node_command(launch_file)
    log.info("starting %s", " ".join(command))
    return run_process_group(command, environ, Path(log_path or os.devnull))


def node_main(argv: Sequence[str] | None = None) -> int:
    """The node command: ``python -m geolocsft.sft.launch <launch.json>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m geolocsft.sft.launch <run_dir>/launch.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return train_on_node(read_launch(Path(args[0])), os.environ)
    except GeolocsftError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(node_main())

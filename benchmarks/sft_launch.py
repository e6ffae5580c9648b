"""Tiny-model training speed on the CPU: 1 process vs 2 processes (torchrun, gloo) vs DeepSpeed
ZeRO-2 (2 processes, CPU accelerator), each through the rule's own launcher
(geolocsft.sft.train.train), on the same 16-sample dataset and YAML.

    .venv/bin/python benchmarks/sft_launch.py            # --epochs 20 --repeats 2 --threads 2

A sanity figure, not a target: it shows that the launches work and what they cost on a small
machine. Prints one table row per launch: median steps/s and samples/s (LLaMA-Factory's
``train_steps_per_second`` / ``train_samples_per_second``) and the wall time of the whole launch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from geolocsft.io import file_sha256  # noqa: E402
from geolocsft.settings import configured  # noqa: E402
from geolocsft.sft.dataset import DatasetSettings, build_dataset  # noqa: E402
from geolocsft.sft.tiny_model import build  # noqa: E402
from geolocsft.sft.train import RunSettings, train  # noqa: E402
from geolocsft.testing.standin import caption_for  # noqa: E402

LAUNCHES = {
    "1 process": {},
    "2 processes (torchrun, gloo)": {"gpus": 2},
    "ZeRO-2, 2 processes (DS_ACCELERATOR=cpu)": {"gpus": 2, "deepspeed": "z2", "device": "cpu"},
}


def dataset(root: Path, samples: int) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(samples):
        path = root / "images" / f"p{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(path)
        rows.append(
            {
                "image_id": path.stem,
                "path": str(path),
                "sha256": file_sha256(path),
                "lat": float(rng.uniform(-60, 70)),
                "lon": float(rng.uniform(-180, 180)),
                "split": "train",
            }
        )
    (root / "captions").mkdir(exist_ok=True)
    for r in rows:
        document = {"image_id": r["image_id"], "caption": caption_for(r["lat"], r["lon"])}
        (root / "captions" / f"{r['image_id']}.json").write_text(json.dumps(document))
    ids = [r["image_id"] for r in rows]
    index = pl.DataFrame(
        {
            "image_id": ids,
            "status": ["captioned"] * samples,
            "flagged": [False] * samples,
            "failure_reason": [None] * samples,
        }
    )
    instruction = (REPO / "config" / "prompts" / "instruction-answer-v1.txt").read_text()
    settings = configured(DatasetSettings, name="geo", target="coordinates")
    out = root / "geo"
    build_dataset(
        pl.DataFrame(rows),
        index,
        root / "captions",
        instruction,
        settings,
        out,
        memo_dir=root / "memo",
        progress=False,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the job")
    parser.add_argument("--only", help="run only the launches whose label contains this")
    parser.add_argument("--workdir", type=Path, help="keep models, runs and logs here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        model = build(root / "model", pretrain_steps=0)
        data = dataset(root, args.samples)
        print("| launch | steps | steps/s (median) | samples/s (median) | wall s (median) |")
        print("|---|---:|---:|---:|---:|")
        for label, changes in LAUNCHES.items():
            if args.only and args.only not in label:
                continue
            steps_per_s, samples_per_s, walls, steps = [], [], [], 0
            for repeat in range(args.repeats):
                run = RunSettings.from_config(
                    "bench",
                    {
                        "dataset": "geo",
                        "bf16": False,
                        "num_train_epochs": args.epochs,
                        "per_device_train_batch_size": 2,
                        "gradient_accumulation_steps": 1,
                        "cutoff_len": 256,
                        "image_max_pixels": 12544,
                        "save_steps": 100000,
                        **changes,
                    },
                )
                tag = "".join(c for c in label[:3] if c.isalnum())
                run_dir = root / f"run-{tag}-{repeat}"
                start = time.perf_counter()
                adapter = train(
                    run,
                    model_path=model,
                    dataset_dir=data,
                    run_dir=run_dir,
                    deepspeed_dir=REPO / "config" / "deepspeed",
                    code="benchmark",
                    log_path=root / f"train-{tag}-{repeat}.log",
                    threads=args.threads,
                )
                walls.append(time.perf_counter() - start)
                results = json.loads((adapter / "train_results.json").read_text())
                steps_per_s.append(float(results["train_steps_per_second"]))
                samples_per_s.append(float(results["train_samples_per_second"]))
                steps = json.loads((adapter / "trainer_state.json").read_text())["global_step"]
            print(
                f"| {label} | {steps} | {statistics.median(steps_per_s):.2f} | "
                f"{statistics.median(samples_per_s):.1f} | {statistics.median(walls):.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

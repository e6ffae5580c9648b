#!/usr/bin/env bash
# The prepared GPU check of the training stage (issue 10): on a machine with one NVIDIA GPU and no
# network, build the tiny Qwen2-VL-style model, fine-tune it with bf16 and DeepSpeed ZeRO-3 on the
# GPU through the rule's own launcher (geolocsft.sft.train.train: torchrun, FORCE_TORCHRUN=1,
# NPROC_PER_NODE=1), let it answer on CUDA, and print steps/s and the parse rate. About 5 minutes.
#
#   bash dev/gpu-check.sh [WHEELS_DIR]      # from the repository root
#
# The machine must have python3.11 with torch (CUDA), transformers and peft. What it lacks
# (llamafactory, deepspeed and their dependencies) comes as wheels in WHEELS_DIR (default
# dev/wheels; make them on a networked machine with
#   pip download -c constraints.txt -d dev/wheels llamafactory deepspeed
# then `pip wheel` the sdists, e.g. DS_BUILD_OPS=0 pip wheel --no-deps -w dev/wheels deepspeed==0.19.8).
# Nothing is downloaded here. Writes everything under ${GPU_CHECK_DIR:-/tmp/geolocsft-gpu-check}.
#
# GPU_CHECK_REHEARSAL=1 rehearses the same steps on a CPU machine with the project's .venv (device
# cpu, bf16 off, DeepSpeed's CPU accelerator): it checks the script itself, not the GPU paths.
# The GPU run itself is untested: no session of this project had a GPU machine when it was written.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-dev/wheels}
WORK=${GPU_CHECK_DIR:-/tmp/geolocsft-gpu-check}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK"
start=$(date +%s)

REHEARSAL=${GPU_CHECK_REHEARSAL:-}
if [ -n "$REHEARSAL" ]; then
    VENV_PY=.venv/bin/python
else
    "$PYTHON" - <<'EOF'
import torch
assert torch.cuda.is_available(), "torch sees no GPU: this check needs one"
print(f"torch {torch.__version__}, GPU: {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}")
EOF

    # A venv that sees the machine's torch/transformers/peft, plus the wheels.
    if [ ! -x "$WORK/venv/bin/python" ]; then
        "$PYTHON" -m venv --system-site-packages "$WORK/venv"
    fi
    VENV_PY="$WORK/venv/bin/python"
    if ! "$VENV_PY" -c "import llamafactory, deepspeed" 2>/dev/null; then
        [ -d "$WHEELS" ] || { echo "error: no wheels folder $WHEELS (see the header of $0)"; exit 1; }
        DS_BUILD_OPS=0 "$VENV_PY" -m pip install --no-index --find-links "$WHEELS" \
            -c constraints.txt llamafactory deepspeed
    fi
    echo "installed in $(( $(date +%s) - start )) s"
fi

export PYTHONPATH="$PWD/src" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
timeout 600 "$VENV_PY" - "$WORK" "$REHEARSAL" <<'EOF'
import json, sys, time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from geolocsft.io import file_sha256
from geolocsft.settings import configured
from geolocsft.sft.dataset import DatasetSettings, build_dataset
from geolocsft.sft.predict import TransformersPredictor, predict, predict_settings
from geolocsft.sft.tiny_model import build_tiny_model
from geolocsft.sft.train import RunSettings, train
from geolocsft.testing.standin import caption_for

work, rehearsal = Path(sys.argv[1]), bool(sys.argv[2])
t = time.time()
model = work / "tiny-qwen2vl"
if not (model / "config.json").is_file():
    build_tiny_model(model)
print(f"tiny model built in {time.time() - t:.0f} s")

# 24 photos with coordinates: 20 to train on, 4 held out.
rng = np.random.default_rng(0)
rows = []
for i in range(24):
    path = work / "images" / f"p{i:02d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(path)
    rows.append({"image_id": path.stem, "path": str(path), "sha256": file_sha256(path),
                 "lat": float(rng.uniform(-60, 70)), "lon": float(rng.uniform(-180, 180)),
                 "split": "train" if i < 20 else "test"})
manifest = pl.DataFrame(rows)
captions = work / "captions"
captions.mkdir(exist_ok=True)
for r in rows:
    (captions / f"{r['image_id']}.json").write_text(
        json.dumps({"image_id": r["image_id"], "caption": caption_for(r["lat"], r["lon"])}))
train_ids = [r["image_id"] for r in rows if r["split"] == "train"]
index = pl.DataFrame({"image_id": train_ids, "status": ["captioned"] * 20,
                      "flagged": [False] * 20, "failure_reason": [None] * 20})
instruction = Path("config/prompts/instruction-answer-v1.txt").read_text()
dataset = work / "sft" / "geo"
build_dataset(manifest, index, captions, instruction,
              configured(DatasetSettings, name="geo", target="coordinates"), dataset,
              memo_dir=work / "memo")

run_config = {"dataset": "geo", "model": "tiny-qwen2vl", "bf16": True, "deepspeed": "z3",
              "device": "gpu", "gpus": 1, "learning_rate": 2.0e-3, "num_train_epochs": 30,
              "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
              "cutoff_len": 512, "image_max_pixels": 50176, "save_steps": 100000,
              "predict": {"max_new_tokens": 48}}
if rehearsal:
    run_config |= {"device": "cpu", "bf16": False}
run = RunSettings.from_config("gpu-check", run_config)
t = time.time()
adapter = train(run, model_path=model, dataset_dir=dataset, run_dir=work / "run",
                deepspeed_dir=Path("config/deepspeed").resolve(), code="gpu-check",
                log_path=work / "train.log", threads=2 if rehearsal else 8)
results = json.loads((adapter / "train_results.json").read_text())
print(f"trained (bf16, ZeRO-3, 1 GPU, torchrun) in {time.time() - t:.0f} s: "
      f"{results.get('train_steps_per_second')} steps/s, {results.get('train_samples_per_second')} samples/s")
launch = json.loads((work / "run" / "launch.json").read_text())
assert launch["deepspeed"] and launch["torchrun"], launch
assert launch["device"] == ("cpu" if rehearsal else "cuda"), launch

settings = predict_settings(run_config, {"target": "coordinates"}, instruction)
predictor = TransformersPredictor(model, adapter, settings)
assert predictor.device == ("cpu" if rehearsal else "cuda"), predictor.device
targets = manifest.filter(pl.col("split") == "test")
t = time.time()
answers = predict(predictor, targets, progress=False)
parsed = answers["pred_lat"].is_not_null().mean()
print(f"predicted {answers.height} held-out images on {predictor.device} in {time.time() - t:.1f} s; "
      f"parse rate {parsed:.0%}")
print(answers.select("raw_answer", "parse_status"))
EOF
echo "gpu-check finished in $(( $(date +%s) - start )) s"

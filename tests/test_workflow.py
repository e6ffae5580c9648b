"""The whole DAG, run by the real Snakemake on a copy of the workflow in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import REPO, write_photo

pytestmark = pytest.mark.workflow

WORKFLOW_PARTS = ("Snakefile", "rules", "scripts", "src", "config", "envs", "report", "profiles")
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def copy_workflow(dest: Path, with_demo: bool = True) -> Path:
    """A self-contained copy of the workflow (and the demo images) to run and modify."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in WORKFLOW_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=ignore)
        else:
            shutil.copy2(source, dest / part)
    if with_demo:
        shutil.copytree(REPO / "data" / "demo", dest / "data" / "demo")
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(SNAKEMAKE), "--cores", "2", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> job count of what a dry run would execute (empty when nothing is to be done)."""
    output = snakemake(workdir, "--dry-run", "--quiet", "rules", *args).stdout
    jobs = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in {"total", "job"}:
            jobs[parts[0]] = int(parts[1])
    return jobs


def write_config(workdir: Path, **changes: object) -> Path:
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config.update(changes)
    path = workdir / "config" / "test.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def copy_finished_run(run: Path, dest: Path) -> Path:
    """A copy of a finished run (workflow, data, results, logs, Snakemake's metadata)."""
    workdir = copy_workflow(dest, with_demo=False)
    for kept in ("data", "results", "logs", ".snakemake"):
        shutil.copytree(run / kept, workdir / kept, symlinks=True)
    return workdir


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo workflow run once to completion; tests below only read its results."""
    workdir = copy_workflow(tmp_path_factory.mktemp("demo"))
    snakemake(workdir)
    return workdir


def test_demo_produces_manifest_predictions_and_accuracy_tables(demo_run):
    manifest = pl.read_parquet(demo_run / "results" / "manifest.parquet")
    assert manifest.height == 20 and set(manifest["coord_source"]) == {"exif"}
    n_test = manifest.filter(pl.col("split") == "test").height
    assert 0 < n_test < 20
    for predictor in ("medoid", "knn"):
        predictions = pl.read_csv(demo_run / "results" / "predictions" / predictor / "holdout.csv")
        assert predictions.columns[:5] == [
            "image_id",
            "pred_lat",
            "pred_lon",
            "true_lat",
            "true_lon",
        ]
        assert predictions.height == n_test
        folder = demo_run / "results" / "eval" / predictor / "holdout"
        accuracy = json.loads((folder / "accuracy.json").read_text())
        assert accuracy["n"] == n_test and accuracy["answered"] == n_test
        for key in ("acc@1km", "acc@25km", "acc@200km", "acc@750km", "acc@2500km"):
            assert 0.0 <= accuracy[key] <= 100.0
        for name in ("error_cdf.png", "world_map.png", "accuracy.md", "per_country.csv"):
            assert (folder / name).stat().st_size > 0
    summary = pl.read_csv(demo_run / "results" / "eval" / "summary.csv")
    assert summary["predictor"].to_list() == ["medoid", "knn", "tiny-demo"]
    assert (demo_run / "logs" / "ingest" / "corpus.log").is_file()


def test_demo_fine_tunes_the_tiny_model_until_it_answers_with_coordinates(demo_run):
    run = demo_run / "results" / "train" / "tiny-demo"
    config = yaml.safe_load((run / "llamafactory_train.yaml").read_text())
    assert config["finetuning_type"] == "lora" and config["template"] == "qwen2_vl"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    losses = [
        e["loss"]
        for e in json.loads((run / "trainer_state.json").read_text())["log_history"]
        if "loss" in e
    ]
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5])  # it really trained
    predictions = pl.read_csv(demo_run / "results" / "predictions" / "tiny-demo" / "holdout.csv")
    parsed = predictions["pred_lat"].is_not_null().mean()
    assert parsed >= 0.9, predictions.select("raw_answer", "parse_status")
    accuracy = json.loads(
        (demo_run / "results" / "eval" / "tiny-demo" / "holdout" / "accuracy.json").read_text()
    )
    assert accuracy["n"] == predictions.height


def test_untrained_tiny_model_gives_no_parseable_answer(demo_run):
    from geolocsft.sft.predict import TransformersPredictor, predict, predict_settings
    from geolocsft.splits import evaluation_targets

    instruction = (REPO / "config" / "prompts" / "instruction-answer-v1.txt").read_text()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["sft"]
    run = config["runs"]["tiny-demo"]
    settings = predict_settings(run, config["datasets"][run["dataset"]], instruction)
    model = demo_run / "results" / "models" / "tiny-qwen2vl"
    targets = evaluation_targets(pl.read_parquet(demo_run / "results" / "manifest.parquet"))
    targets = targets.with_columns(
        pl.format("{}/{}", pl.lit(str(demo_run)), pl.col("path")).alias("path")
    )
    untrained = predict(TransformersPredictor(model, None, settings), targets, progress=False)
    assert untrained["pred_lat"].is_not_null().mean() <= 0.3


def test_medoid_baseline_predicts_a_training_location(demo_run):
    manifest = pl.read_parquet(demo_run / "results" / "manifest.parquet")
    train = manifest.filter(pl.col("split") == "train").select("lat", "lon").rows()
    predictions = pl.read_csv(demo_run / "results" / "predictions" / "medoid" / "holdout.csv")
    answers = set(predictions.select("pred_lat", "pred_lon").rows())
    assert len(answers) == 1 and answers.pop() in set(train)


def test_report_holds_tables_and_plots(demo_run, tmp_path):
    workdir = copy_finished_run(demo_run, tmp_path / "wf")
    snakemake(workdir, "--report", "report.html")
    html = (workdir / "report.html").read_text()
    for name in (
        "summary.md",
        "world_map.png",
        "error_cdf.png",
        "rejected.csv",
        "stats.json",
        "loss.png",
        "token_lengths.png",
        "index.csv",
    ):
        assert name in html, name
    # Each output carries its caption (report/*.rst), rendered with its wildcards.
    assert "Training loss of run" in html and "tiny-demo" in html


def test_rerun_is_a_no_op_and_a_code_change_reruns_only_its_rules(demo_run, tmp_path):
    workdir = copy_finished_run(demo_run, tmp_path / "wf")
    assert planned_jobs(workdir) == {}
    with (workdir / "src" / "geolocsft" / "evaluate.py").open("a") as module:
        module.write("\n# a change to the evaluation code\n")
    assert planned_jobs(workdir) == {
        "evaluate": 3,
        "evaluate_summary": 1,
        "audit_manifest": 1,
        "all": 1,
    }


def test_image_jobs_with_few_new_images_ask_snakemake_for_one_thread(demo_run):
    """The demo has fewer images than scale_out.parallel_from_new_items: the features and
    dataset jobs, whose threads are counted from the memo when they are scheduled, each had one
    thread; ingest (a fixed two) had both cores."""
    provenance = demo_run / "results" / "audit" / "provenance"

    def threads(rule: str) -> list[int]:
        records = sorted((provenance / rule).glob("*.json"))
        assert records, rule
        return [json.loads(record.read_text())["threads"] for record in records]

    assert threads("image_features") == [1]
    assert set(threads("sft_dataset")) == {1}
    assert set(threads("ingest_corpus")) == {2}


def test_the_workflow_cancels_timers_left_waiting_when_it_ends():
    """The Snakefile's onsuccess/onerror handlers cancel what would keep the process alive
    after the last job: a timer armed for a minute ends at once and never fires."""
    import threading

    from geolocsft.workflow import cancel_pending_timers

    fired = threading.Event()
    timer = threading.Timer(60.0, fired.set)
    timer.start()
    assert cancel_pending_timers() >= 1
    timer.join(timeout=5.0)
    assert not timer.is_alive() and not fired.is_set()
    snakefile = (REPO / "Snakefile").read_text()
    assert "onsuccess:\n    cancel_pending_timers()" in snakefile
    assert "onerror:\n    cancel_pending_timers()" in snakefile


def _reversed_keys(value: object) -> object:
    if isinstance(value, dict):
        return {k: _reversed_keys(value[k]) for k in reversed(list(value))}
    return value


def test_the_same_configuration_in_another_key_order_or_via_config_plans_nothing(
    demo_run, tmp_path
):
    workdir = copy_finished_run(demo_run, tmp_path / "wf")
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    reordered = workdir / "config" / "config.yaml"
    reordered.write_text(yaml.safe_dump(_reversed_keys(config), sort_keys=False))
    assert planned_jobs(workdir) == {}
    # The same values on the command line, a number written as an integer (timeout_s is a
    # `number` in the schema: 600 and 600.0 are one setting).
    same = "{backend: metadata, timeout_s: 600, concurrency: 8, splits: [train]}"
    assert planned_jobs(workdir, "--config", f"captions={same}") == {}
    # A real change is still seen.
    assert "evaluate" in planned_jobs(workdir, "--config", "evaluate={seed: 1}")


def test_a_module_used_only_indirectly_by_a_script_reruns_its_rule(demo_run, tmp_path):
    """scripts/predict_sft.py never imports geolocsft.answers; sft.predict does. The rule's code
    version comes from the static import graph, so a change there reruns the predictions."""
    workdir = copy_finished_run(demo_run, tmp_path / "wf")
    with (workdir / "src" / "geolocsft" / "answers.py").open("a") as module:
        module.write("\n# a change to the answer parser\n")
    plan = planned_jobs(workdir)
    assert plan["predict_sft"] == 1 and plan["evaluate"] == 1, plan
    assert "sft_train" not in plan and "ingest_corpus" not in plan, plan


def test_adding_an_image_reruns_ingest_and_keeps_existing_splits(demo_run, tmp_path):
    workdir = copy_finished_run(demo_run, tmp_path / "wf")
    before = pl.read_parquet(workdir / "results" / "manifest.parquet")
    from PIL import Image

    with Image.open(workdir / "data/demo/images/HTC_Desire.jpg") as source:
        exif = source.getexif()
        source.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
            workdir / "data/demo/images/HTC_Desire_mirrored.jpg", exif=exif.tobytes()
        )
    assert "ingest_corpus" in planned_jobs(workdir)
    snakemake(workdir, "--until", "ingest_corpus")
    after = pl.read_parquet(workdir / "results" / "manifest.parquet")
    assert after.height == before.height + 1
    joined = before.join(after, on="image_id", suffix="_after")
    assert (joined["split"] == joined["split_after"]).all()


def test_quarantined_rows_reach_the_report_and_fail_policy_names_them(tmp_path):
    workdir = copy_workflow(tmp_path / "wf", with_demo=False)
    images = workdir / "photos"
    for i in range(6):
        write_photo(images / f"p{i}.jpg", seed=i)
    write_photo(images / "tiny.jpg", size=(1, 1))
    (workdir / "labels.csv").write_text(
        "id,lat,lon\n"
        + "".join(f"p{i},{10 + i},{20 + i}\n" for i in range(6))
        + "tiny,1,1\nghost,1,1\np0,95,1\n"
    )
    corpus = {"name": "t", "images": "photos", "metadata": "labels.csv"}
    config = write_config(workdir, corpus=corpus, ingest={"test_fraction": 0.5})
    snakemake(workdir, "--configfile", str(config), "--until", "ingest_corpus")
    rejected = pl.read_csv(workdir / "results" / "ingest" / "rejected.csv")
    # The second 'p0' row has a bad latitude: it is rejected for that, and the valid p0 is kept.
    assert sorted(rejected["reason"]) == ["bad_latitude", "missing_file", "too_small"]
    manifest = pl.read_parquet(workdir / "results" / "manifest.parquet")
    assert sorted(manifest["image_id"]) == [f"p{i}" for i in range(6)]

    config = write_config(
        workdir, corpus=corpus, ingest={"test_fraction": 0.5, "on_bad_input": "fail"}
    )
    failed = snakemake(
        workdir, "--configfile", str(config), "--forceall", "--until", "ingest_corpus", check=False
    )
    assert failed.returncode != 0
    log = (workdir / "logs" / "ingest" / "corpus.log").read_text()
    assert "labels.csv, row 8: image 'ghost'" in log and "missing_file" in log
    assert "Traceback" not in log and "Traceback" not in failed.stderr


def test_bad_config_and_bad_table_columns_fail_at_parse_time(tmp_path):
    workdir = copy_workflow(tmp_path / "wf", with_demo=True)
    config = write_config(workdir, ingest={"on_bad_input": "ignore"})
    result = snakemake(workdir, "--configfile", str(config), "-n", check=False)
    assert result.returncode != 0
    assert "On instance['ingest']['on_bad_input']" in result.stdout + result.stderr
    (workdir / "t.csv").write_text("photo,where\n")
    corpus = {"images": "data/demo/images", "metadata": "t.csv"}
    result = snakemake(
        workdir, "--configfile", str(write_config(workdir, corpus=corpus)), "-n", check=False
    )
    assert result.returncode != 0
    assert "corpus.metadata: t.csv: no lat column" in result.stdout + result.stderr


def test_im2gps3k_sample_as_a_benchmark(shared_dir, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    sample = shared_dir / "data" / "im2gps3k-sample"
    config = write_config(
        workdir,
        benchmarks={
            "im2gps3k": {"images": str(sample / "images"), "metadata": str(sample / "metadata.csv")}
        },
    )
    snakemake(workdir, "--configfile", str(config))
    manifest = pl.read_parquet(workdir / "results" / "benchmarks" / "im2gps3k" / "manifest.parquet")
    assert manifest.height == 200 and manifest["image_id"].str.contains("@").all()
    accuracy = json.loads(
        (workdir / "results" / "eval" / "knn" / "im2gps3k" / "accuracy.json").read_text()
    )
    assert accuracy["n"] == 200
    summary = pl.read_csv(workdir / "results" / "eval" / "summary.csv")
    assert summary.filter(pl.col("evalset") == "im2gps3k")["predictor"].to_list() == [
        "medoid",
        "knn",
        "tiny-demo",
    ]


def the_papers_setting(workdir: Path) -> dict:
    """The demo's sft block switched to the paper's setting, as config/examples/demo-full.yaml
    documents it: the full geo-caption (reasoning, then answer) as the target, with the
    instruction asking for both (the tiny model is fully fine-tuned: see that file)."""
    sft = yaml.safe_load((workdir / "config" / "config.yaml").read_text())["sft"]
    example = yaml.safe_load((workdir / "config" / "examples" / "demo-full.yaml").read_text())
    sft["datasets"] |= example["sft"]["datasets"]
    sft["runs"] = example["sft"]["runs"]
    return sft


def test_gemini_captions_through_the_workflow_reuse_the_store_and_hide_the_key(
    tmp_path, monkeypatch
):
    """The paper's setting, end to end: captions from the (loopback) Gemini API with reasoning and
    answer, the full caption as the target, trained with the real llamafactory-cli on the CPU,
    predicted, parsed from answer.coordinates only, and evaluated."""
    from geolocsft.testing.standin import Standin, StandinState

    key = "AIza-workflow-test-key-must-not-leak"
    workdir = copy_workflow(tmp_path / "wf")
    # The captioner's answers are 0.05 degrees (about 5 km) off the truth: kept (under the flag
    # distance), but the training target carries the true coordinates.
    state = StandinState(latency_s=0.05, fault_script=["429", "malformed"], answer_offset_deg=0.05)
    with Standin(state) as standin:
        captions = {
            "backend": "gemini",
            "gemini": {"base_url": standin.url},
            "backoff_initial_s": 0.01,
        }
        config = write_config(workdir, captions=captions, sft=the_papers_setting(workdir))
        monkeypatch.setenv("GEMINI_API_KEY", key)
        # The whole DAG: Gemini captions -> dataset -> training -> predictions -> accuracy tables.
        snakemake(workdir, "--configfile", str(config))
        first = standin.state.requests
        # Forcing the caption job again (its outputs are deleted first) costs nothing.
        forced = ("--until", "geocaption", "--forcerun", "geocaption")
        snakemake(workdir, "--configfile", str(config), *forced)
        assert standin.state.requests == first
        assert standin.state.api_keys == {key}
    manifest = pl.read_parquet(workdir / "results" / "manifest.parquet")
    folder = workdir / "results" / "geocaptions" / "gemini-gemini-2.5-flash" / "geocaption-v1"
    captioned = sorted(p.stem for p in (folder / "captions").rglob("*.json"))
    assert captioned == sorted(manifest.filter(pl.col("split") == "train")["image_id"])
    assert first == len(captioned) + 2  # one 429 and one malformed answer were retried
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["from_store"] == len(captioned) and summary["requests_sent"] == 0
    stats = json.loads((workdir / "results" / "sft" / "geocaptions" / "stats.json").read_text())
    assert stats["samples"] == len(captioned)
    summary_table = pl.read_csv(workdir / "results" / "eval" / "summary.csv")
    assert "tiny-demo" in summary_table["predictor"].to_list()
    # The targets: whole captions, reasoning first, with the true coordinates (to 6 decimals).
    truth = {r["image_id"]: r for r in manifest.iter_rows(named=True)}
    samples = json.loads((workdir / "results/sft/geocaptions/geocaptions.json").read_text())
    for sample in samples:
        target = json.loads(sample["conversations"][1]["content"])
        assert list(target) == ["thinking", "answer"]
        image_id = Path(sample["images"][0]).stem
        coordinates = target["answer"]["coordinates"]
        assert coordinates["latitude"] == round(truth[image_id]["lat"], 6)
        assert coordinates["longitude"] == round(truth[image_id]["lon"], 6)
    # Trained, it writes whole captions and >= 90% of its answers parse, from answer.coordinates.
    predictions = pl.read_csv(workdir / "results" / "predictions" / "tiny-demo" / "holdout.csv")
    assert predictions["pred_lat"].is_not_null().mean() >= 0.9, predictions
    parsed = predictions.filter(pl.col("pred_lat").is_not_null())
    assert set(parsed["parse_status"]) <= {"json", "json_partial"}
    assert parsed["raw_answer"].str.starts_with('{"thinking": ').all()
    accuracy = json.loads((workdir / "results/eval/tiny-demo/holdout/accuracy.json").read_text())
    assert accuracy["n"] == predictions.height and accuracy["answered"] == parsed.height
    adapter = workdir / "results" / "train" / "tiny-demo" / "adapter"
    assert (adapter / "model.safetensors").is_file()  # a full fine-tune: the whole model
    # Untrained, the tiny model never writes an answer.coordinates (about 0% parse).
    from geolocsft.sft.predict import TransformersPredictor, predict, predict_settings
    from geolocsft.splits import evaluation_targets

    sft = the_papers_setting(workdir)
    settings = predict_settings(
        sft["runs"]["tiny-demo"],
        sft["datasets"]["geocaptions"],
        (workdir / "config" / "prompts" / "instruction-v1.txt").read_text(),
    )
    targets = evaluation_targets(manifest).with_columns(
        pl.format("{}/{}", pl.lit(str(workdir)), pl.col("path")).alias("path")
    )
    model = TransformersPredictor(workdir / "results" / "models" / "tiny-qwen2vl", None, settings)
    untrained = predict(model, targets, progress=False)
    assert untrained["pred_lat"].is_not_null().mean() <= 0.1, untrained

    # Rebuilt from the response store alone (the stand-in is gone), the captions and the
    # fine-tuning dataset come back byte for byte.
    def tree(folder: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".snakemake_timestamp"
        }

    dataset_dir = workdir / "results" / "sft" / "geocaptions"
    snakemake(workdir, "--configfile", str(config), "--until", "sft_dataset")
    dataset_before, captions_before = tree(dataset_dir), tree(folder / "captions")
    assert len(dataset_before) > len(captioned) and len(captions_before) == len(captioned)
    shutil.rmtree(workdir / "results" / "geocaptions")
    shutil.rmtree(dataset_dir)
    snakemake(workdir, "--configfile", str(config), "--until", "sft_dataset")
    assert tree(folder / "captions") == captions_before
    assert tree(dataset_dir) == dataset_before
    for root in ("results", "logs", ".snakemake", "cache"):
        for path in (workdir / root).rglob("*"):
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path

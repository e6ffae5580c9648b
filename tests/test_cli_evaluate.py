"""`geolocsft evaluate` as a user runs it: outputs, stdout table, clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geolocsft.cli import main

REPO = Path(__file__).resolve().parents[1]
HEADER = "image_id,pred_lat,pred_lon,true_lat,true_lon"


def write_predictions(path: Path, lines: list[str], header: str = HEADER) -> Path:
    path.write_bytes(("\r\n".join([header, *lines]) + "\r\n").encode())
    return path


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "src"), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    return subprocess.run(
        [sys.executable, "-m", "geolocsft.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_evaluate_writes_outputs_and_prints_table(tmp_path: Path) -> None:
    pred = write_predictions(
        tmp_path / "preds.csv",
        ["a,48.8566,2.3522,48.8566,2.3522", "b,unknown,,51.5,-0.13", "c,40,-74,41,-74"],
    )
    done = run_cli("evaluate", pred)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "preds_eval"  # the documented default: <folder>/<stem>_eval
    for name in ("accuracy.json", "accuracy.csv", "accuracy.md", "per_image.csv"):
        assert (out / name).is_file()
    for name in ("per_country.csv", "error_cdf.png", "world_map.png"):
        assert (out / name).is_file()
    assert "| Acc@1 km (%) | 33.33 |" in done.stdout
    assert "| answered | 2 (66.67%) | |" in done.stdout
    document = json.loads((out / "accuracy.json").read_text())
    assert document["label"] == "preds"
    assert document["acc@200km"] == pytest.approx(200 / 3)


def test_evaluate_options(tmp_path: Path) -> None:
    pred = write_predictions(tmp_path / "p.csv", ["a,0,0,0,0", "b,0,0.005,0,0"])
    out = tmp_path / "custom"
    done = run_cli(
        "evaluate",
        pred,
        "--out",
        out,
        "--thresholds",
        "0.5,1",
        "--interval",
        "bootstrap",
        "--bootstrap",
        "0",
        "--distance",
        "geodesic",
        "--seed",
        "4",
        "--label",
        "knn/holdout",
        "--no-plots",
    )
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "accuracy.json").read_text())
    assert document["acc@0.5km"] == 50.0  # 0.005° of longitude is about 0.557 km
    assert document["acc@1km"] == 100.0
    assert document["ci"] == {"acc@0.5km": None, "acc@1km": None}
    assert (document["distance"], document["seed"], document["label"]) == (
        "geodesic",
        4,
        "knn/holdout",
    )
    assert not (out / "world_map.png").exists()
    assert "| Acc@0.5 km (%) | 50.00 |" in done.stdout


def test_bad_ground_truth_is_one_error_line(tmp_path: Path) -> None:
    pred = write_predictions(tmp_path / "p.csv", ["a,1,1,1,1", "b,1,1,1,1", "c,1,1,lat?,1"])
    done = run_cli("evaluate", pred, "--no-plots")
    assert done.returncode == 1
    assert done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr
    assert str(pred) in done.stderr
    assert "'true_lat'" in done.stderr and "row 3 ('lat?')" in done.stderr
    assert done.stdout == ""


def test_missing_column_and_missing_file(tmp_path: Path) -> None:
    pred = write_predictions(tmp_path / "p.csv", ["1,2,3"], header="pred_lat,pred_lon,true_lat")
    done = run_cli("evaluate", pred)
    assert done.returncode == 1
    assert "error: " in done.stderr and "'true_lon'" in done.stderr
    assert "Traceback" not in done.stderr
    done = run_cli("evaluate", tmp_path / "nowhere.csv")
    assert done.returncode == 1
    assert "nowhere.csv" in done.stderr and "Traceback" not in done.stderr


def test_main_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = write_predictions(tmp_path / "p.csv", ["a,10,10,10,10", "b,,,20,20"])
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,lat,lon,country_code\na,10,10,NG\nb,20,20,NG\n")
    status = main(["-q", "evaluate", str(pred), "--manifest", str(manifest), "--no-plots"])
    assert status == 0
    assert "| Acc@1 km (%) | 50.00 |" in capsys.readouterr().out
    per_country = (tmp_path / "p_eval" / "per_country.csv").read_text().splitlines()
    assert per_country[1].startswith("NG,2,1,50.0,")


def test_bad_settings_and_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = write_predictions(tmp_path / "p.csv", ["a,10,10,10,10"])
    assert main(["evaluate", str(pred), "--confidence", "1.5", "--no-plots"]) == 1
    assert capsys.readouterr().err.startswith("error: evaluate: confidence")
    with pytest.raises(SystemExit) as excinfo:
        main(["evaluate", str(pred), "--thresholds", "one,two"])
    assert excinfo.value.code == 2
    assert "comma-separated distances" in capsys.readouterr().err


def test_help_documents_default_output_folder() -> None:
    done = run_cli("evaluate", "--help")
    assert done.returncode == 0
    assert "<PRED's folder>/<PRED's stem>_eval" in " ".join(done.stdout.split())

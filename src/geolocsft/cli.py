"""The ``geolocsft`` command line: one subcommand per stage that makes sense on its own.

Each subcommand is registered by an ``add_<name>_command(subparsers)`` function that sets
``handler`` (a function of the parsed arguments returning the exit status) on its subparser;
:func:`build_parser` calls them all. A :class:`~geolocsft.errors.GeolocsftError` is printed as
``error: <message>`` on stderr, without a traceback, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from geolocsft import __version__
from geolocsft.errors import GeolocsftError
from geolocsft.settings import with_defaults

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse's _SubParsersAction is private


def _thresholds(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated distances in km such as 1,25,200, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one distance in km")
    return values


def add_evaluate_command(subparsers: Subparsers) -> argparse.ArgumentParser:
    """``geolocsft evaluate PRED.csv``: Acc@R, per-country table and plots of a prediction file."""
    from geolocsft.evaluate import default_settings

    defaults = default_settings()
    default_thresholds = ",".join(f"{r:g}" for r in defaults.thresholds_km)
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "evaluate",
        help="score a prediction table (Acc@R with confidence intervals, per country, plots)",
        description=(
            "Score a prediction table with columns image_id, pred_lat, pred_lon (and true_lat, "
            "true_lon unless --manifest gives the truth; any other columns are kept). With "
            "--manifest, the eval set's manifest gives truth and n: its test split (or every "
            "row when it has no split column) is evaluated, an image without a prediction row "
            "is a miss, and an image_id that is not in it or comes twice is an error. Without "
            "it, truth and n come from the file itself, and the outputs say so. An empty, "
            "non-numeric or out-of-range prediction is an unanswered row and counts as a miss: "
            "Acc@R is the percent of ALL images within R km; longitudes written in 0..360 are "
            "converted with a warning. A bad ground truth is an error naming the rows. Writes "
            "accuracy.json, accuracy.csv, accuracy.md, per_image.csv, per_country.csv (header "
            "only when no country is known) and, unless --no-plots, error_cdf.png and "
            "world_map.png; prints the accuracy table to stdout."
        ),
    )
    parser.add_argument(
        "predictions", type=Path, metavar="PRED", help="prediction table (.csv, .tsv or .parquet)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default: <PRED's folder>/<PRED's stem>_eval)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        metavar="MANIFEST",
        help="the eval set's manifest (.parquet or .csv with image_id, lat, lon; optional split "
        "and country_code): the truth, the images and n of the evaluation, joined by image_id; "
        "its country_code gives the per-country table",
    )
    parser.add_argument(
        "--thresholds",
        type=_thresholds,
        default=defaults.thresholds_km,
        metavar="KM,KM,...",
        help=f"Acc@R radii in km (default: {default_thresholds})",
    )
    parser.add_argument(
        "--distance",
        choices=("haversine", "geodesic"),
        default=defaults.distance,
        help="great circle on a sphere, or WGS84 ellipsoid (default: %(default)s)",
    )
    parser.add_argument(
        "--earth-radius-km",
        type=float,
        default=defaults.earth_radius_km,
        metavar="KM",
        help="sphere radius for haversine (default: %(default)s)",
    )
    parser.add_argument(
        "--interval",
        choices=("wilson", "bootstrap"),
        default=defaults.interval,
        help="confidence interval of each Acc@R: Wilson score, or percentile bootstrap "
        "(Wilson at 0 or n hits) (default: %(default)s)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=defaults.bootstrap_resamples,
        metavar="B",
        help="bootstrap resamples for --interval bootstrap, 0 for no interval "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=defaults.confidence,
        help="confidence level of the intervals (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed of the bootstrap and the map subsample (default: %(default)s)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip error_cdf.png, world_map.png")
    parser.add_argument(
        "--label", metavar="NAME", help="name of this run in the outputs (default: PRED's stem)"
    )
    parser.set_defaults(handler=run_evaluate)
    return parser


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``geolocsft evaluate``."""
    from geolocsft.evaluate import EvaluationSettings, evaluate_file, metrics_markdown

    settings = EvaluationSettings.from_mapping(
        {
            "thresholds_km": args.thresholds,
            "distance": args.distance,
            "earth_radius_km": args.earth_radius_km,
            "interval": args.interval,
            "bootstrap_resamples": args.bootstrap,
            "confidence": args.confidence,
            "seed": args.seed,
        }
    )
    predictions: Path = args.predictions
    out_dir = args.out if args.out is not None else default_evaluate_dir(predictions)
    result = evaluate_file(
        predictions,
        out_dir,
        manifest_path=args.manifest,
        settings=settings,
        make_plots=not args.no_plots,
        label=args.label,
    )
    sys.stdout.write(metrics_markdown(result.metrics, result.label, result.truth_source))
    log.info("outputs in %s", out_dir)
    return 0


def default_evaluate_dir(predictions: Path) -> Path:
    """``<folder>/<stem>_eval`` beside the prediction file."""
    return predictions.parent / f"{predictions.stem}_eval"


def add_audit_command(subparsers: Subparsers) -> argparse.ArgumentParser:
    """``geolocsft audit``: re-hash every artifact of the audit manifest and report drift."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "audit",
        help="re-hash every artifact and report drift (missing, changed, other code/config)",
        description=(
            "Re-hash every artifact listed in results/audit/manifest.json (written by the "
            "workflow's last job) and report each one that is missing, changed since, made by "
            "package code that has changed since, or whose job's config subset, input set or "
            "rule code Snakemake now sees as changed (snakemake --list-changes). Exit status 0 "
            "when nothing drifted, 2 when something did."
        ),
    )
    _directory_argument(parser)
    parser.add_argument(
        "--manifest",
        type=Path,
        default=Path("results/audit/manifest.json"),
        metavar="FILE",
        help="the audit manifest, relative to DIR (default: results/audit/manifest.json)",
    )
    parser.add_argument(
        "--no-snakemake",
        action="store_true",
        help="skip asking Snakemake about changed params, inputs and rule code (hashes and "
        "package code only)",
    )
    parser.add_argument(
        "--configfile",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="config file(s) the workflow was run with (passed on to snakemake)",
    )
    parser.add_argument(
        "--memo-dir",
        type=Path,
        default=Path(with_defaults("memo", {})["dir"]),
        metavar="DIR",
        help="the per-item memo (memo.dir of the config, relative to DIR), which remembers file "
        "hashes by inode, size and mtime (default: %(default)s)",
    )
    parser.add_argument(
        "--rehash",
        action="store_true",
        help="read and hash every file again, trusting no remembered hash",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--all", action="store_true", help="list unchanged artifacts too")
    parser.set_defaults(handler=run_audit)
    return parser


def run_audit(args: argparse.Namespace) -> int:
    """Handler of ``geolocsft audit``."""
    import dataclasses
    import json

    from geolocsft.audit import FileHashes, audit, format_findings

    snakemake_args: list[str] = []
    for path in args.configfile:
        snakemake_args += ["--configfile", str(path)]
    workdir = args.directory.resolve()
    memo_dir = args.memo_dir if args.memo_dir.is_absolute() else workdir / args.memo_dir
    hashes = FileHashes(None) if args.rehash else FileHashes.in_memo(memo_dir)
    findings = audit(
        workdir,
        args.manifest,
        check_snakemake=not args.no_snakemake,
        snakemake_args=snakemake_args,
        hashes=hashes,
    )
    if args.json:
        print(json.dumps([dataclasses.asdict(f) for f in findings], indent=2))
    else:
        print(format_findings(findings, show_ok=args.all))
    return 0 if all(f.status == "ok" for f in findings) else 2


def add_captions_command(subparsers: Subparsers) -> argparse.ArgumentParser:
    """``geolocsft captions import DIR`` / ``export``: captions made elsewhere, in and out."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "captions",
        help="import captions written by the GeoLocSFT paper's script, or export ours so",
        description="Move geo-captions between this workflow and the GeoLocSFT paper's format.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    importing = actions.add_parser(
        "import",
        help="store per-image caption JSON files as answers, so no request is paid for them",
        description=(
            "Read the per-image JSON files in DIR (as written by the GeoLocSFT paper's "
            "captioning script: <image>.json with image_id, thinking and answer in the paper's "
            "field names; this workflow's caption files work too), validate each against the "
            "caption schema and store it in the response store as the answer of the configured "
            "captioner (captions.backend, model, prompt and parameters) for its manifest image "
            "(matched by image id, or by the image file's name without extension). The next "
            "workflow run builds their caption files from the store and sends no request for "
            "them. Every file is listed in a report under <store>/imports/."
        ),
    )
    importing.add_argument("source", type=Path, metavar="DIR", help="folder of caption files")
    _workflow_arguments(importing)
    exporting = actions.add_parser(
        "export",
        help="write caption files as the paper's script writes its answers",
        description=(
            "Write each caption file under CAPTIONS (a results/geocaptions/.../captions "
            "folder) as <OUT>/<image file stem>.json with image_id, thinking and answer, the "
            "format the GeoLocSFT paper's script writes."
        ),
    )
    exporting.add_argument("captions", type=Path, metavar="CAPTIONS", help="caption folder")
    exporting.add_argument("out", type=Path, metavar="OUT", help="output folder")
    exporting.add_argument(
        "--manifest",
        type=Path,
        metavar="MANIFEST",
        help="manifest (.parquet) giving each image's file name (default: <image_id>.jpg)",
    )
    parser.set_defaults(handler=run_captions)
    return parser


def _directory_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--directory",
        "-d",
        type=Path,
        default=Path(),
        metavar="DIR",
        help="the workflow's working directory (default: the current one)",
    )


def _workflow_arguments(parser: argparse.ArgumentParser) -> None:
    _directory_argument(parser)
    parser.add_argument(
        "--configfile",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="config file(s), relative to DIR, merged in order (default: config/config.yaml)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=Path("results/manifest.parquet"),
        metavar="MANIFEST",
        help="the corpus manifest, relative to DIR (default: results/manifest.parquet)",
    )


def run_captions(args: argparse.Namespace) -> int:
    """Handler of ``geolocsft captions``."""
    import polars as pl

    from geolocsft.captions.importer import (
        export_paper_format,
        import_captions,
        load_config,
        report_line,
    )

    if args.action == "export":
        names = None
        if args.manifest is not None:
            manifest = pl.read_parquet(args.manifest, columns=["image_id", "path"])
            names = {i: Path(p).name for i, p in manifest.iter_rows()}
        count = export_paper_format(args.captions, args.out, names)
        print(f"{count} captions written to {args.out}")
        return 0
    from geolocsft.captions.prompts import PromptTemplate
    from geolocsft.captions.stage import backend_identity
    from geolocsft.captions.store import ResponseStore
    from geolocsft.settings import with_defaults

    base: Path = args.directory
    files = [base / f for f in (args.configfile or [Path("config/config.yaml")])]
    captions = with_defaults("captions", load_config(files).get("captions", {}))
    manifest_path = base / args.manifest
    if not manifest_path.is_file():
        raise GeolocsftError(
            f"{manifest_path}: no manifest; run the workflow's ingest first "
            "(snakemake --until ingest_corpus)"
        )
    report = import_captions(
        args.source,
        pl.read_parquet(manifest_path),
        backend_identity(captions),
        PromptTemplate.load(base / "config" / "prompts" / f"{captions['prompt_version']}.txt"),
        ResponseStore(base / captions["store"]),
    )
    print(report_line(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geolocsft",
        description="Planet-scale visual geolocation by supervised fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="log debugging details to stderr"
    )
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log only warnings")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_evaluate_command(subparsers)
    add_audit_command(subparsers)
    add_captions_command(subparsers)
    return parser


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("geolocsft").setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geolocsft`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    handler: Handler = args.handler
    try:
        return handler(args)
    except GeolocsftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Geo-caption stage: the real google-genai and openai SDKs against the loopback stand-in.

Nothing is mocked here but the remote API itself, which cannot be reached from this machine:
``geolocsft.testing.standin`` speaks its wire protocol on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO, write_photo

from geolocsft.captions.backends import GenerationParams, MetadataBackend, ModelResponse
from geolocsft.captions.documents import CaptionItem, caption_file, read_caption
from geolocsft.captions.gemini import GeminiBackend
from geolocsft.captions.openai_compat import OpenAICompatibleBackend
from geolocsft.captions.prompts import PromptTemplate
from geolocsft.captions.requests import RunnerSettings, mime_type_and_bytes
from geolocsft.captions.runner import caption_images
from geolocsft.captions.schema import GeoCaption, ModelGeoCaption, response_json_schema
from geolocsft.captions.stage import run_stage
from geolocsft.captions.store import ResponseStore, key_maker, response_key
from geolocsft.captions.validate import ContentError, parse_caption
from geolocsft.errors import GeolocsftError
from geolocsft.io import file_sha256
from geolocsft.settings import configured, with_defaults
from geolocsft.testing.standin import Standin, StandinState, caption_for

API_KEY = "test-key-0123456789-do-not-leak"
PROMPT = REPO / "config" / "prompts" / "geocaption-v1.txt"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    return API_KEY


def make_items(folder: Path, count: int, start: int = 0) -> list[CaptionItem]:
    items = []
    for i in range(start, start + count):
        path = write_photo(folder / f"img{i:03d}.jpg", seed=i)
        items.append(
            CaptionItem(
                image_id=f"img{i:03d}",
                path=path,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                lat=10.0 + i / 10,
                lon=-20.0 - i / 10,
                place="Testville, Nowhere",
            )
        )
    return items


def sent_image_hash(item: CaptionItem) -> str:
    """The sha256 of the image bytes as the API receives them (the stand-in counts by it)."""
    return hashlib.sha256(mime_type_and_bytes(item.path, 1024)[1]).hexdigest()


def gemini(url: str) -> GeminiBackend:
    return GeminiBackend("gemini-2.5-flash", configured(GenerationParams), base_url=url)


def run(
    items, backend, tmp_path: Path, memo: bool = False, **settings
) -> tuple[pl.DataFrame, dict]:
    defaults = {"concurrency": 4, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    return caption_images(
        items,
        backend,
        ResponseStore(tmp_path / "store"),
        PromptTemplate.load(PROMPT),
        configured(RunnerSettings, **{**defaults, **settings}),
        tmp_path / "captions",
        progress=False,
        memo_dir=tmp_path / "memo" if memo else None,
        failures_path=tmp_path / "failures.csv",
    )


def caption_names(folder: Path) -> list[str]:
    """The image ids of the caption files in a (sharded) caption folder."""
    return sorted(p.stem for p in folder.rglob("*.json"))


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.json"))}


# -- schema, prompt, parsing ----------------------------------------------------------------


def test_response_schema_is_self_contained_and_in_the_papers_field_names():
    schema = response_json_schema()
    assert "$ref" not in json.dumps(schema) and "$defs" not in schema
    assert schema["required"] == ["thinking", "answer"]
    thinking = schema["properties"]["thinking"]
    # The GeoLocSFT paper's script asks for exactly these keys (see captions.legacy).
    assert thinking["required"] == [
        "25km_analysis",
        "1km_analysis",
        "buildings_infrastructure",
        "vehicles_traffic",
        "terrain_soil",
        "elimination_similar_regions",
    ]
    local = thinking["properties"]["1km_analysis"]["properties"]
    assert local["vegetation"]["required"] == [
        "tree_species",
        "herbaceous_plants",
        "vegetation_management",
    ]
    eliminated = thinking["properties"]["elimination_similar_regions"]["items"]
    assert eliminated["required"] == ["eliminated_region", "reasons"]
    ModelGeoCaption.model_validate(caption_for(1.0, 2.0))
    answer_only = {"thinking": None, "answer": caption_for(1.0, 2.0)["answer"]}
    GeoCaption.model_validate(answer_only)
    with pytest.raises(ValueError):
        ModelGeoCaption.model_validate(answer_only)


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (ModelResponse(text=None, finish_reason=None, block_reason="SAFETY"), "blocked"),
        (ModelResponse(text=None, finish_reason="SAFETY"), "blocked"),
        (ModelResponse(text=None, finish_reason="CONTENT_FILTER"), "blocked"),
        (ModelResponse(text=None, finish_reason=None), "empty_response"),
        (ModelResponse(text='{"thinking": {', finish_reason="MAX_TOKENS"), "truncated"),
        (ModelResponse(text="```json\n{}\n```", finish_reason="STOP"), "markdown_fences"),
        (ModelResponse(text='{"thinking": 1,}', finish_reason="STOP"), "malformed_json"),
        (ModelResponse(text='{"answer": {}}', finish_reason="STOP"), "schema_violation"),
    ],
)
def test_content_errors_are_recognised(response, reason):
    with pytest.raises(ContentError) as excinfo:
        parse_caption(response, require_thinking=True)
    assert excinfo.value.reason == reason


def test_out_of_range_answer_and_our_old_field_names_are_schema_violations():
    caption = caption_for(95.0, 0.0)
    response = ModelResponse(text=json.dumps(caption), finish_reason="STOP")
    with pytest.raises(ContentError, match="schema_violation"):
        parse_caption(response, require_thinking=True)
    old = caption_for(1.0, 2.0)
    old["thinking"]["regional_analysis_25km"] = old["thinking"].pop("25km_analysis")
    with pytest.raises(ContentError, match="schema_violation"):
        parse_caption(ModelResponse(text=json.dumps(old), finish_reason="STOP"), True)


def test_prompt_renders_truth_and_rejects_unknown_placeholders(tmp_path):
    prompt = PromptTemplate.load(PROMPT)
    text = prompt.render(41.853, 12.488833, "Rome, Latium, IT")
    assert "latitude 41.853000, longitude 12.488833" in text and "Rome, Latium, IT" in text
    bad = tmp_path / "v9.txt"
    bad.write_text("Where is ${city}?")
    with pytest.raises(GeolocsftError, match="unknown placeholders"):
        PromptTemplate.load(bad)


def test_store_key_changes_with_everything_that_shapes_the_answer():
    base = {
        "image_sha256": "a" * 64,
        "prompt_sha256": "b" * 64,
        "backend": "gemini",
        "model": "m",
        "params": {"temperature": 0.2},
        "schema_version": "s",
    }
    key = response_key(**base)
    assert response_key(**base) == key
    rest = {k: v for k, v in base.items() if k != "image_sha256"}
    assert key_maker(**rest)(base["image_sha256"]) == key  # the fast path, for many images
    for field, value in [
        ("image_sha256", "c" * 64),
        ("prompt_sha256", "d" * 64),
        ("model", "m2"),
        ("params", {"temperature": 0.3}),
        ("schema_version", "s2"),
    ]:
        assert response_key(**{**base, field: value}) != key


# -- the runner with the real SDKs ------------------------------------------------------------


def test_adding_k_images_makes_exactly_k_calls_into_a_sharded_folder(tmp_path):
    items = make_items(tmp_path / "img", 10)
    with Standin(StandinState(latency_s=0.01)) as standin:
        index, summary = run(items, gemini(standin.url), tmp_path)
        assert standin.state.requests == 10 and summary["new_from_api"] == 10
        more = items + make_items(tmp_path / "img", 3, start=10)
        index, summary = run(more, gemini(standin.url), tmp_path)
        assert standin.state.requests == 13
        assert summary["from_store"] == 10 and summary["new_from_api"] == 3
    assert (index["status"] == "captioned").all()
    folder = tmp_path / "captions"
    assert caption_names(folder) == [i.image_id for i in more]
    for row in index.iter_rows(named=True):
        path = caption_file(folder, row["image_id"])
        assert path.parent.parent == folder  # captions/<2 hex>/<id>.json
        assert (folder / row["caption_path"]) == path
        assert row["caption_sha256"] == file_sha256(path)  # what a dataset reuses its text by
        assert read_caption(path)["caption"]["thinking"]["1km_analysis"]["vegetation"]


def test_no_image_is_lost_under_faults_and_every_bad_answer_is_kept(tmp_path):
    items = make_items(tmp_path / "img", 24)
    rates = {"429": 0.1, "503": 0.1, "500": 0.05, "malformed": 0.08, "fences": 0.05}
    rates["no_candidates"] = 0.03
    state = StandinState(fault_rates=rates, retry_delay_s=0.01, seed=3)
    with Standin(state) as standin:
        index, summary = run(items, gemini(standin.url), tmp_path, max_attempts=20)
    assert summary["captioned"] == 24 and summary["failed"] == 0
    assert sum(state.faults_sent.values()) > 5
    store = ResponseStore(tmp_path / "store")
    kept = sum(len(store.failures(k)) for k in index["store_key"])
    content_faults = sum(state.faults_sent[k] for k in ("malformed", "fences", "no_candidates"))
    assert kept == content_faults
    assert summary["requests_sent"] == state.requests
    assert summary["answers_received"] == 24 + content_faults
    assert summary["rate_limited"] == state.faults_sent["429"]
    assert summary["server_errors"] == state.faults_sent["503"] + state.faults_sent["500"]
    for path in (tmp_path / "captions").rglob("*.json"):
        document = read_caption(path)
        ModelGeoCaption.model_validate(document["caption"])
        assert document["provenance"]["model_version"] == "standin-gemini-001"


def test_429s_and_5xx_do_not_use_up_the_attempts_of_invalid_answers(tmp_path):
    """The issue's image failed after 503, 429, 429, trunc, 429: transient failures have a
    budget of their own, and a truncated answer is asked once more with a larger limit."""
    items = make_items(tmp_path / "img", 1)
    script = ["503", "429", "429", "truncated", "429", "malformed", "503"]
    state = StandinState(fault_script=list(script), retry_delay_s=0.01)
    with Standin(state) as standin:
        index, summary = run(items, gemini(standin.url), tmp_path, max_attempts=2)
    assert index["status"].to_list() == ["captioned"] and state.requests == len(script) + 1
    assert summary["rate_limited"] == 3 and summary["server_errors"] == 2
    assert summary["answers_received"] == 3  # truncated, malformed, the caption: all billed


def test_transient_failures_are_bounded_then_left_for_the_next_run(tmp_path):
    items = make_items(tmp_path / "img", 4)
    doomed = sent_image_hash(items[1])
    state = StandinState(fault_for=lambda image, n: "503" if image == doomed else None)
    with Standin(state) as standin:
        index, summary = run(items, gemini(standin.url), tmp_path, max_transient_retries=2)
        failed = index.filter(pl.col("status") == "failed").row(0, named=True)
        assert failed["image_id"] == "img001" and failed["attempts"] == 3
        assert failed["failure_class"] == "transient"
        assert failed["failure_reason"] == "server_error" and "503" in failed["failure_detail"]
        assert failed["attempt_reasons"] == "server_error;server_error;server_error"
        assert state.by_image[doomed] == 3
        assert summary["unresolved_by_reason"] == {"server_error": 1}
        assert summary["permanent_failures"] == 0 and summary["captioned"] == 3
        assert not caption_file(tmp_path / "captions", "img001").exists()
        attempts = pl.read_csv(tmp_path / "failures.csv")
        assert attempts["image_id"].to_list() == ["img001"] * 3
        assert attempts["attempt"].to_list() == [1, 2, 3]
        # A plain rerun asks again for exactly that image.
        state.fault_for = None
        index, summary = run(items, gemini(standin.url), tmp_path)
        assert state.by_image[doomed] == 4 and state.requests == 3 + 3 + 1
    assert summary["captioned"] == 4 and summary["new_from_api"] == 1


def test_invalid_answers_are_never_written_and_fail_permanently_after_max_attempts(tmp_path):
    items = make_items(tmp_path / "img", 1)
    state = StandinState(fault_script=["fences", "no_candidates", "malformed"])
    with Standin(state) as standin:
        index, summary = run(items, gemini(standin.url), tmp_path, max_attempts=3)
        assert index["failure_reason"].to_list() == ["malformed_json"]
        assert index["failure_class"].to_list() == ["permanent"]
        assert summary["permanent_by_reason"] == {"malformed_json": 1}
        assert not list((tmp_path / "captions").rglob("*.json"))
        store = ResponseStore(tmp_path / "store")
        key = index["store_key"][0]
        reasons = [f["failure"] for f in store.failures(key)]
        assert reasons == ["markdown_fences", "empty_response", "malformed_json"]
        record = store.get_permanent(key)
        assert [a["reason"] for a in record["attempts"]] == reasons
        # Recorded once: the next run does not pay for it again, and lists every attempt.
        index, summary = run(items, gemini(standin.url), tmp_path, max_attempts=3)
        assert state.requests == 3
        assert index["source"].to_list() == ["store"]
        assert index["attempt_reasons"].to_list() == [";".join(reasons)]
        assert pl.read_csv(tmp_path / "failures.csv")["reason"].to_list() == reasons


@pytest.mark.parametrize("fault", ["blocked", "safety"])
def test_a_safety_block_is_recorded_once_and_resent_only_when_asked(tmp_path, fault):
    items = make_items(tmp_path / "img", 3)
    doomed = sent_image_hash(items[0])
    state = StandinState(fault_for=lambda image, n: fault if image == doomed else None)
    with Standin(state) as standin:
        _, summary = run(items, gemini(standin.url), tmp_path)
        assert state.by_image[doomed] == 1 and summary["permanent_by_reason"] == {"blocked": 1}
        assert summary["unresolved"] == 0
        _, summary = run(items, gemini(standin.url), tmp_path)
        assert state.by_image[doomed] == 1 and state.requests == 3
        assert summary["permanent_failures"] == 1 and summary["requests_sent"] == 0
        state.fault_for = None
        _, summary = run(items, gemini(standin.url), tmp_path, retry_failed=True)
        assert state.by_image[doomed] == 2 and summary["captioned"] == 3


def test_a_truncated_answer_is_asked_once_more_with_a_larger_limit_then_given_up(tmp_path):
    items = make_items(tmp_path / "img", 1)
    state = StandinState(min_output_tokens=8000)
    with Standin(state) as standin:
        index, _ = run(items, gemini(standin.url), tmp_path / "a", max_output_tokens_ceiling=8192)
    assert index["status"].to_list() == ["captioned"]
    assert state.output_limits == [4096, 8192]
    document = read_caption(tmp_path / "a" / "captions" / index["caption_path"][0])
    assert document["provenance"]["max_output_tokens_used"] == 8192
    assert document["provenance"]["params"]["max_output_tokens"] == 4096  # the key's identity
    state = StandinState(min_output_tokens=20000)
    with Standin(state) as standin:
        index, summary = run(items, gemini(standin.url), tmp_path / "b")
        assert state.output_limits == [4096, 16384]
        assert summary["permanent_by_reason"] == {"truncated": 1}
        run(items, gemini(standin.url), tmp_path / "b")
        assert state.requests == 2  # not bought a third time
        state.min_output_tokens = 0
        _, summary = run(items, gemini(standin.url), tmp_path / "c", max_output_tokens_ceiling=None)
    assert summary["permanent_by_reason"] == {} and state.requests == 3


def test_a_timeout_names_its_value_counts_as_possibly_billed_and_is_retried_once(tmp_path):
    items = make_items(tmp_path / "img", 2)
    slow = sent_image_hash(items[0])
    state = StandinState(fault_for=lambda image, n: "slow" if image == slow else None, slow_s=2.0)
    with Standin(state) as standin:
        backend = GeminiBackend(
            "gemini-2.5-flash", configured(GenerationParams), base_url=standin.url, timeout_s=0.5
        )
        index, summary = run(items, backend, tmp_path)
        time.sleep(2.5)  # the server finishes the abandoned requests
    failed = index.filter(pl.col("status") == "failed").row(0, named=True)
    assert failed["failure_class"] == "transient" and failed["attempt_reasons"] == "timeout;timeout"
    assert "no answer within 0.5 s (captions.timeout_s)" in failed["failure_detail"]
    assert state.by_image[slow] == 2 and state.processed == 3  # billed without an answer
    assert summary["timeouts"] == 2 and summary["possibly_billed_requests"] == 2
    assert summary["requests_sent"] == 3 and summary["answers_received"] == 1
    assert summary["billed_requests"] == 1 and summary["timeout_s"] == 0.5


def test_a_connection_that_never_opens_is_not_counted_as_sent(tmp_path):
    items = make_items(tmp_path / "img", 1)
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    index, summary = run(
        items, gemini(f"http://127.0.0.1:{closed}"), tmp_path, max_transient_retries=1
    )
    assert index["failure_reason"].to_list() == ["connection"]
    assert summary["requests_sent"] == 0 and summary["requests_not_sent"] == 2
    assert summary["possibly_billed_requests"] == 0


def test_a_rejected_key_stops_the_run_from_sending_more(tmp_path):
    items = make_items(tmp_path / "img", 5)
    state = StandinState(fault_script=["403"] * 5)
    with Standin(state) as standin:
        index, summary = run(items, gemini(standin.url), tmp_path, concurrency=1)
    assert state.requests == 1 and summary["rejected"] == 1
    assert summary["unresolved_by_reason"] == {"rejected_403": 1, "not_sent": 4}
    assert set(index["failure_class"]) == {"rejected"}
    assert "PERMISSION_DENIED" in index["failure_detail"][1]


def test_429_waits_for_the_servers_retry_delay(tmp_path):
    items = make_items(tmp_path / "img", 1)
    state = StandinState(fault_script=["429"], retry_delay_s=0.6)
    with Standin(state) as standin:
        index, _ = run(items, gemini(standin.url), tmp_path, backoff_initial_s=0.0)
    assert index["status"].to_list() == ["captioned"]
    assert state.times[1] - state.times[0] >= 0.6


def test_requests_per_window_cap_is_respected_end_to_end(tmp_path):
    items = make_items(tmp_path / "img", 9)
    state = StandinState(requests_per_minute=4, window_s=1.0)
    with Standin(state) as standin:
        # A 1 s window instead of a minute keeps the test short; the arithmetic is the same.
        run(
            items,
            gemini(standin.url),
            tmp_path,
            concurrency=9,
            requests_per_minute=4,
            rate_window_s=1.0,
        )
    assert state.requests == 9 and state.rejected_over_cap == 0
    assert state.max_requests_in_window(0.95) <= 4
    gaps = [b - a for a, b in itertools.pairwise(state.times)]
    # Evenly spaced (one every 1 / 3.8 s), never in bursts; a busy machine delays some sends,
    # so the next gap can be shorter, never near zero.
    assert min(gaps) >= 0.5 / 3.8
    assert state.times[-1] - state.times[0] >= 1.9


def test_answers_far_from_the_truth_are_flagged(tmp_path):
    items = make_items(tmp_path / "img", 2)
    with Standin(StandinState(answer_offset_deg=1.0)) as standin:
        index, summary = run(items, gemini(standin.url), tmp_path, flag_distance_km=25.0)
    assert index["flagged"].all() and summary["flagged"] == 2
    assert index["answer_distance_km"].min() == pytest.approx(111.2, abs=0.5)


def test_budget_guard_stops_before_any_paid_request(tmp_path):
    items = make_items(tmp_path / "img", 5)
    with Standin() as standin:
        with pytest.raises(GeolocsftError, match="5 images need new captions"):
            run(items, gemini(standin.url), tmp_path, max_new_requests=2)
        assert standin.state.requests == 0


def test_a_changed_prompt_is_never_answered_from_old_captions(tmp_path):
    items = make_items(tmp_path / "img", 3)
    edited = tmp_path / "geocaption-v1.txt"
    edited.write_text(PROMPT.read_text() + "\nBe brief.\n")
    with Standin() as standin:
        run(items, gemini(standin.url), tmp_path)
        caption_images(
            items,
            gemini(standin.url),
            ResponseStore(tmp_path / "store"),
            PromptTemplate.load(edited),
            configured(RunnerSettings),
            tmp_path / "c2",
            progress=False,
        )
        assert standin.state.requests == 6


def test_openai_compatible_backend_and_metadata_backend(tmp_path):
    items = make_items(tmp_path / "img", 3)
    with Standin(StandinState(fault_script=["429", "503"], retry_delay_s=0.01)) as standin:
        backend = OpenAICompatibleBackend(
            "qwen2.5-vl", configured(GenerationParams), base_url=f"{standin.url}/v1"
        )
        _, summary = run(items, backend, tmp_path / "openai")
    assert summary["captioned"] == 3 and summary["requests_sent"] == 5
    assert summary["answers_received"] == 3 and summary["rate_limited"] == 1
    _, summary = run(items, MetadataBackend(), tmp_path / "metadata")
    document = read_caption(caption_file(tmp_path / "metadata" / "captions", "img000"))
    assert document["caption"]["thinking"] is None
    assert document["caption"]["answer"]["coordinates"]["region"] == "Testville, Nowhere"
    assert document["check"]["answer_distance_km"] == 0.0 and summary["requests_sent"] == 0
    assert summary["offline"] == 3 and document["provenance"]["origin"] == "offline"


def test_the_metadata_backend_does_no_image_work(tmp_path):
    """It answers from the manifest row alone: not even a missing image file is touched."""
    items = [
        CaptionItem(f"gone{i}", tmp_path / "nowhere" / f"{i}.jpg", "a" * 64, 1.0, 2.0, "P")
        for i in range(3)
    ]
    _, summary = run(items, MetadataBackend(), tmp_path)
    assert summary["captioned"] == 3 and not (tmp_path / "nowhere").exists()


def test_structured_and_grounding_modes_send_what_gemini_expects(tmp_path):
    items = make_items(tmp_path / "img", 1)
    with Standin() as standin:
        run(items, gemini(standin.url), tmp_path / "structured")
        config = standin.state.last_request["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config["responseJsonSchema"] == response_json_schema()
        assert "tools" not in standin.state.last_request
        grounded = GeminiBackend(
            "gemini-2.5-flash", configured(GenerationParams), base_url=standin.url, mode="grounding"
        )
        index, _ = run(items, grounded, tmp_path / "grounding")
        body = standin.state.last_request
    assert body["tools"] == [{"googleSearch": {}}]
    assert "responseJsonSchema" not in body["generationConfig"]
    prompt = body["contents"][0]["parts"][1]["text"]
    assert '"elimination_similar_regions"' in prompt  # the schema travels in the prompt
    assert '"25km_analysis"' in prompt
    # Grounded answers are different requests: they never reuse structured answers.
    assert index["source"].to_list() == ["api"]


def test_missing_api_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(GeolocsftError, match="GEMINI_API_KEY"):
        gemini("http://127.0.0.1:9")


def test_the_api_key_appears_in_no_artifact(tmp_path):
    items = make_items(tmp_path / "img", 3)
    state = StandinState(fault_script=["malformed", "503"])
    with Standin(state) as standin:
        run(items, gemini(standin.url), tmp_path, memo=True)
    assert state.api_keys == {API_KEY}  # the SDK really sent it
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


# -- the per-item memo of caption files -----------------------------------------------------


def test_a_memoized_caption_file_is_byte_identical_to_one_rebuilt_from_the_store(tmp_path):
    items = make_items(tmp_path / "img", 6)
    with Standin() as standin:
        run(items, gemini(standin.url), tmp_path, memo=True)
    fresh = tree(tmp_path / "captions")
    # Rebuilt from the memo (hard links to its blobs), no request, no stand-in.
    index, summary = run(items, gemini("http://127.0.0.1:9"), tmp_path, memo=True)
    assert summary["from_store"] == 6 and summary["requests_sent"] == 0
    assert tree(tmp_path / "captions") == fresh
    linked = tmp_path / "captions" / index["caption_path"][0]
    assert linked.stat().st_nlink == 2  # the output file and its blob
    assert index["caption_sha256"][0] == file_sha256(linked)
    # Rebuilt from the store alone (memo deleted): the same bytes again.
    shutil.rmtree(tmp_path / "memo")
    run(items, gemini("http://127.0.0.1:9"), tmp_path, memo=True)
    assert tree(tmp_path / "captions") == fresh
    # A stored answer replaced by hand is never served from the memo.
    store = ResponseStore(tmp_path / "store")
    key = index["store_key"][0]
    path = store.root / "responses" / key[:2] / f"{key}.json"
    record = json.loads(path.read_text())
    record["received_at"] = "2000-01-01T00:00:00Z"
    path.unlink()
    path.write_text(json.dumps(record))
    run(items, gemini("http://127.0.0.1:9"), tmp_path, memo=True)
    rebuilt = read_caption(tmp_path / "captions" / index["caption_path"][0])
    assert rebuilt["provenance"]["received_at"] == "2000-01-01T00:00:00Z"


def test_offline_caption_files_are_memoized_by_the_manifest_fields_that_shape_them(tmp_path):
    items = make_items(tmp_path / "img", 2)
    run(items, MetadataBackend(), tmp_path, memo=True)
    first = tree(tmp_path / "captions")
    moved = [CaptionItem(i.image_id, i.path, i.sha256, i.lat + 1, i.lon, i.place) for i in items]
    run(moved, MetadataBackend(), tmp_path, memo=True)
    changed = tree(tmp_path / "captions")
    assert changed.keys() == first.keys() and changed != first
    run(items, MetadataBackend(), tmp_path, memo=True)
    assert tree(tmp_path / "captions") == first


# -- answers of the earlier schema ------------------------------------------------------------


def legacy_caption(lat: float, lon: float) -> dict:
    """A caption in this project's first schema (geocaption-1)."""
    new = caption_for(lat, lon)["thinking"]
    return {
        "thinking": {
            "regional_analysis_25km": {
                "terrain": new["25km_analysis"]["terrain_characteristics"],
                "climate": new["25km_analysis"]["climate_features"],
                "regional_development": new["25km_analysis"]["regional_development"],
            },
            "local_analysis_1km": {
                "road_engineering": {
                    "surface": "asphalt",
                    "markings": "white",
                    "guardrails": "none",
                    "lighting": "poles",
                    "drainage": "kerbs",
                },
                "vegetation": {"species": "oak", "undergrowth": "grass", "management": "mown"},
            },
            "buildings_and_infrastructure": "brick houses",
            "vehicles_and_traffic": "right-hand traffic",
            "terrain_and_soil": "loam",
            "elimination_similar_regions": [{"region": "Belgium", "reasons": ["signs"]}],
        },
        "answer": caption_for(lat, lon)["answer"],
    }


def test_an_answer_paid_for_in_the_earlier_schema_is_upgraded_not_bought_again(tmp_path):
    items = make_items(tmp_path / "img", 2)
    backend = gemini("http://127.0.0.1:9")
    store = ResponseStore(tmp_path / "store")
    prompt = PromptTemplate.load(PROMPT)
    old_key = response_key(
        image_sha256=items[0].sha256,
        prompt_sha256=prompt.sha256,
        backend="gemini",
        model="gemini-2.5-flash",
        params=backend.identity_params(),
        schema_version="geocaption-1",
    )
    text = json.dumps(legacy_caption(items[0].lat, items[0].lon))
    store.put(
        old_key,
        {
            "key": old_key,
            "identity": {"backend": "gemini", "model": "gemini-2.5-flash", "params": {}},
            "response": {"text": text, "finish_reason": "STOP"},
            "received_at": "2025-01-01T00:00:00Z",
        },
    )
    with Standin() as standin:
        index, summary = run(items, gemini(standin.url), tmp_path)
        assert standin.state.requests == 1  # only the image without an old answer
    assert summary["from_store"] == 1
    document = read_caption(tmp_path / "captions" / index["caption_path"][0])
    thinking = document["caption"]["thinking"]
    assert thinking["1km_analysis"]["vegetation"]["herbaceous_plants"] == "grass"
    assert thinking["elimination_similar_regions"] == [
        {"eliminated_region": "Belgium", "reasons": ["signs"]}
    ]
    assert document["provenance"]["upgraded_from"]["key"] == old_key
    assert store.get(index["store_key"][0]) is not None  # now under the current key


def test_a_caption_file_of_the_earlier_schema_reads_in_the_papers_names(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(
        json.dumps({"schema_version": "geocaption-1", "caption": legacy_caption(1.0, 2.0)})
    )
    document = read_caption(path)
    ModelGeoCaption.model_validate(document["caption"])
    assert document["caption"]["thinking"]["terrain_soil"]["terrain_details"] == "loam"
    assert document["upgraded_from"] == "geocaption-1"


# -- kill -9 in the middle of a run ----------------------------------------------------------

CHILD = """
import json, sys
from pathlib import Path
from geolocsft.captions.backends import GenerationParams
from geolocsft.captions.documents import CaptionItem
from geolocsft.captions.gemini import GeminiBackend
from geolocsft.captions.prompts import PromptTemplate
from geolocsft.captions.requests import RunnerSettings
from geolocsft.captions.runner import caption_images
from geolocsft.captions.store import ResponseStore
from geolocsft.settings import configured
url, workdir, prompt = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
rows = json.loads((workdir / "items.json").read_text())
items = [CaptionItem(**{**row, "path": Path(row["path"])}) for row in rows]
backend = GeminiBackend("gemini-2.5-flash", configured(GenerationParams), base_url=url)
caption_images(items, backend, ResponseStore(workdir / "store"), PromptTemplate.load(prompt),
               configured(RunnerSettings, concurrency=2), workdir / "captions", progress=False,
               memo_dir=workdir / "memo")
"""


def test_resume_after_kill_9_repeats_no_finished_image(tmp_path):
    items = make_items(tmp_path / "img", 12)
    (tmp_path / "items.json").write_text(
        json.dumps([{**dataclasses.asdict(i), "path": str(i.path)} for i in items])
    )
    state = StandinState(latency_s=0.25)
    with Standin(state) as standin:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, standin.url, str(tmp_path), str(PROMPT)],
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )
        store_dir = tmp_path / "store" / "responses"
        deadline = time.monotonic() + 60
        while len(list(store_dir.rglob("*.json"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
        stored_before = {p.stem for p in store_dir.rglob("*.json")}
        assert 4 <= len(stored_before) < 12
        for path in (tmp_path / "captions").rglob("*.json"):
            json.loads(path.read_text())  # every caption file is whole
        requests_before = state.requests
        index, summary = run(items, gemini(standin.url), tmp_path, memo=True, concurrency=4)
    assert summary["captioned"] == 12 and summary["from_store"] == len(stored_before)
    assert state.requests - requests_before == 12 - len(stored_before)
    # An image whose answer was stored before the kill was asked for exactly once.
    by_key = dict(zip(index["store_key"], index["image_id"], strict=True))
    for key in stored_before:
        item = next(i for i in items if i.image_id == by_key[key])
        assert state.by_image[sent_image_hash(item)] == 1


# -- Gemini Batch API ------------------------------------------------------------------------


def batch_backend(url: str) -> GeminiBackend:
    return GeminiBackend("gemini-2.5-flash", configured(GenerationParams), base_url=url, batch=True)


def test_batch_mode_submits_one_job_and_stores_every_answer(tmp_path):
    items = make_items(tmp_path / "img", 6)
    state = StandinState(batch_delay_s=0.3, fault_script=["ok", "malformed", "503"])
    with Standin(state) as standin:
        _, summary = run(items, batch_backend(standin.url), tmp_path, batch_poll_s=0.05)
        assert len(state.batches) == 1 and state.requests == 6
        assert summary["captioned"] == 4
        assert summary["unresolved_by_reason"] == {"malformed_json": 1, "batch_error": 1}
        # The next run submits a job for the two failed images only; online answers share keys.
        _, summary = run(items, batch_backend(standin.url), tmp_path, batch_poll_s=0.05)
        assert len(state.batches) == 2 and state.requests == 8
        assert summary["captioned"] == 6 and summary["from_store"] == 4
        online_before = state.requests
        _, summary = run(items, gemini(standin.url), tmp_path)
        assert state.requests == online_before and summary["from_store"] == 6
    job_files = list((tmp_path / "store" / "batches").glob("*.json"))
    assert len(job_files) == 2 and all(json.loads(p.read_text())["collected"] for p in job_files)


def test_a_batch_job_outlives_its_run_and_is_resumed_not_resubmitted(tmp_path):
    items = make_items(tmp_path / "img", 3)
    state = StandinState(batch_delay_s=1.0)
    with Standin(state) as standin:
        with pytest.raises(GeolocsftError, match="still JOB_STATE_RUNNING"):
            run(items, batch_backend(standin.url), tmp_path, batch_poll_s=0.05, batch_timeout_s=0.2)
        assert len(state.batches) == 1
        time.sleep(1.0)
        _, summary = run(items, batch_backend(standin.url), tmp_path, batch_poll_s=0.05)
        assert len(state.batches) == 1 and state.requests == 3
    assert summary["captioned"] == 3


# -- the stage: a failed job keeps every success, a plain rerun retries exactly the rest ----------


def write_manifest(items: list[CaptionItem], path: Path) -> Path:
    pl.DataFrame(
        {
            "image_id": [i.image_id for i in items],
            "path": [str(i.path) for i in items],
            "sha256": [i.sha256 for i in items],
            "lat": [i.lat for i in items],
            "lon": [i.lon for i in items],
            "split": ["train"] * len(items),
        }
    ).write_parquet(path)
    return path


def stage(tmp_path: Path, manifest: Path, url: str, **captions) -> dict:
    config = with_defaults(
        "captions",
        {
            "backend": "gemini",
            "store": str(tmp_path / "store"),
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.02,
            "gemini": {"base_url": url},
            **captions,
        },
    )
    out = tmp_path / "out"
    return run_stage(
        manifest,
        PROMPT,
        config,
        out / "captions",
        out / "index.csv",
        out / "summary.json",
        progress=False,
        memo_dir=tmp_path / "memo",
        failures_path=tmp_path / "logs" / "failures.csv",
    )


def test_a_job_with_transient_failures_stores_every_success_then_fails(tmp_path, caplog):
    items = make_items(tmp_path / "img", 6)
    manifest = write_manifest(items, tmp_path / "manifest.parquet")
    unlucky = {sent_image_hash(items[1]), sent_image_hash(items[4])}
    blocked = sent_image_hash(items[2])

    def fault(image: str, number: int) -> str | None:
        return "503" if image in unlucky else "blocked" if image == blocked else None

    state = StandinState(fault_for=fault)
    with Standin(state) as standin:
        with pytest.raises(GeolocsftError) as excinfo:
            stage(tmp_path, manifest, standin.url, max_transient_retries=1)
        message = str(excinfo.value)
        assert "\n" not in message
        assert "2 of 6 images have no caption" in message and "server_error 2" in message
        assert str(tmp_path / "logs" / "failures.csv") in message
        assert "1 images failed permanently" in message
        assert "failed permanently (blocked 1)" in caplog.text  # the WARNING line
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["captioned"] == 3 and summary["unresolved"] == 2
        listed = pl.read_csv(tmp_path / "logs" / "failures.csv")
        assert sorted(set(listed["image_id"])) == ["img001", "img002", "img004"]
        assert listed.height == 2 * 2 + 1  # two attempts each, one for the block
        assert len(list((tmp_path / "store" / "responses").rglob("*.json"))) == 3
        # A plain rerun: exactly the two images again (the block is not resent).
        before = state.requests
        state.fault_for = None
        summary = stage(tmp_path, manifest, standin.url)
        assert state.requests - before == 2
    assert summary["captioned"] == 5 and summary["permanent_failures"] == 1
    assert summary["new_from_api"] == 2 and summary["from_store"] == 3

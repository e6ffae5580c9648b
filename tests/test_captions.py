"""Geo-caption stage: the real google-genai and openai SDKs against the loopback stand-in.

Nothing is mocked here but the remote API itself, which cannot be reached from this machine:
``geolocsft.testing.standin`` speaks its wire protocol on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO, write_photo

from geolocsft.captions.backends import (
    GeminiBackend,
    GenerationParams,
    MetadataBackend,
    ModelResponse,
    OpenAICompatibleBackend,
)
from geolocsft.captions.prompts import PromptTemplate
from geolocsft.captions.runner import (
    CaptionItem,
    ContentError,
    RateLimiter,
    RunnerSettings,
    caption_images,
    mime_type_and_bytes,
    parse_caption,
)
from geolocsft.captions.schema import GeoCaption, ModelGeoCaption, response_json_schema
from geolocsft.captions.store import ResponseStore, response_key
from geolocsft.errors import GeolocsftError
from geolocsft.settings import configured
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


def run(items, backend, tmp_path: Path, **settings) -> tuple[pl.DataFrame, dict]:
    defaults = {"concurrency": 4, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    return caption_images(
        items,
        backend,
        ResponseStore(tmp_path / "store"),
        PromptTemplate.load(PROMPT),
        configured(RunnerSettings, **{**defaults, **settings}),
        tmp_path / "captions",
        progress=False,
    )


# -- schema, prompt, parsing ----------------------------------------------------------------


def test_response_schema_is_self_contained_and_matches_the_model():
    schema = response_json_schema()
    assert "$ref" not in json.dumps(schema) and "$defs" not in schema
    assert schema["required"] == ["thinking", "answer"]
    ModelGeoCaption.model_validate(caption_for(1.0, 2.0))
    answer_only = {"thinking": None, "answer": caption_for(1.0, 2.0)["answer"]}
    GeoCaption.model_validate(answer_only)
    with pytest.raises(ValueError):
        ModelGeoCaption.model_validate(answer_only)


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (ModelResponse(text=None, finish_reason=None, block_reason="SAFETY"), "blocked"),
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


def test_out_of_range_answer_is_a_schema_violation():
    caption = caption_for(95.0, 0.0)
    response = ModelResponse(text=json.dumps(caption), finish_reason="STOP")
    with pytest.raises(ContentError, match="schema_violation"):
        parse_caption(response, require_thinking=True)


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
    for field, value in [
        ("image_sha256", "c" * 64),
        ("prompt_sha256", "d" * 64),
        ("model", "m2"),
        ("params", {"temperature": 0.3}),
    ]:
        assert response_key(**{**base, field: value}) != key


# -- rate limiter -----------------------------------------------------------------------------


def test_rate_limiter_never_exceeds_requests_or_tokens_in_any_window():
    async def scenario() -> list[float]:
        limiter = RateLimiter(requests_per_window=4, tokens_per_window=250, window_s=0.5)
        starts = []

        async def request(tokens: int) -> None:
            await limiter.acquire(tokens)
            starts.append((time.monotonic(), tokens))

        await asyncio.gather(*(request(60) for _ in range(12)))
        return starts

    starts = asyncio.run(scenario())
    for t0, _ in starts:
        window = [tok for t, tok in starts if t0 <= t < t0 + 0.5 - 1e-3]
        assert len(window) <= 4 and sum(window) <= 250


# -- the runner with the real SDKs ------------------------------------------------------------


def test_adding_k_images_makes_exactly_k_calls(tmp_path):
    items = make_items(tmp_path / "img", 10)
    with Standin(StandinState(latency_s=0.01)) as standin:
        index, summary = run(items, gemini(standin.url), tmp_path)
        assert standin.state.requests == 10 and summary["new_from_api"] == 10
        more = items + make_items(tmp_path / "img", 3, start=10)
        index, summary = run(more, gemini(standin.url), tmp_path)
        assert standin.state.requests == 13
        assert summary["from_store"] == 10 and summary["new_from_api"] == 3
    assert (index["status"] == "captioned").all()
    assert sorted(p.stem for p in (tmp_path / "captions").glob("*.json")) == [
        i.image_id for i in more
    ]


def test_no_image_is_lost_under_faults_and_every_bad_answer_is_kept(tmp_path):
    items = make_items(tmp_path / "img", 24)
    rates = {
        "429": 0.1,
        "503": 0.1,
        "malformed": 0.08,
        "truncated": 0.05,
        "fences": 0.05,
        "blocked": 0.05,
        "no_candidates": 0.03,
    }
    state = StandinState(fault_rates=rates, retry_delay_s=0.01, seed=3)
    with Standin(state) as standin:
        index, summary = run(items, gemini(standin.url), tmp_path, max_attempts=20)
    assert summary["captioned"] == 24 and summary["failed"] == 0
    assert sum(state.faults_sent.values()) > 5
    store = ResponseStore(tmp_path / "store")
    kept = sum(len(store.failures(k)) for k in index["store_key"])
    content_faults = sum(
        state.faults_sent[k]
        for k in ("malformed", "truncated", "fences", "blocked", "no_candidates")
    )
    assert kept == content_faults
    for path in (tmp_path / "captions").glob("*.json"):
        document = json.loads(path.read_text())
        ModelGeoCaption.model_validate(document["caption"])
        assert document["provenance"]["model_version"] == "standin-gemini-001"


def test_attempts_are_bounded_then_the_image_is_recorded_as_failed(tmp_path):
    items = make_items(tmp_path / "img", 4)
    doomed = sent_image_hash(items[1])
    state = StandinState(fault_for=lambda image, n: "503" if image == doomed else None)
    with Standin(state) as standin:
        index, summary = run(items, gemini(standin.url), tmp_path, max_attempts=3)
    failed = index.filter(pl.col("status") == "failed").row(0, named=True)
    assert failed["image_id"] == "img001" and failed["attempts"] == 3
    assert failed["failure_reason"] == "transient_error" and "503" in failed["failure_detail"]
    assert state.by_image[doomed] == 3
    assert summary["failed_by_reason"] == {"transient_error": 1} and summary["captioned"] == 3
    assert not (tmp_path / "captions" / "img001.json").exists()


def test_invalid_answers_are_never_written_as_captions(tmp_path):
    items = make_items(tmp_path / "img", 1)
    state = StandinState(fault_script=["fences", "truncated", "malformed"])
    with Standin(state) as standin:
        index, _ = run(items, gemini(standin.url), tmp_path, max_attempts=3)
    assert index["failure_reason"].to_list() == ["malformed_json"]
    assert not list((tmp_path / "captions").glob("*.json"))
    reasons = [
        f["failure"] for f in ResponseStore(tmp_path / "store").failures(index["store_key"][0])
    ]
    assert reasons == ["markdown_fences", "truncated", "malformed_json"]


def test_429_waits_for_the_servers_retry_delay(tmp_path):
    items = make_items(tmp_path / "img", 1)
    state = StandinState(fault_script=["429"], retry_delay_s=0.6)
    with Standin(state) as standin:
        index, _ = run(items, gemini(standin.url), tmp_path, backoff_initial_s=0.0)
    assert index["status"].to_list() == ["captioned"]
    assert state.times[1] - state.times[0] >= 0.6


def test_requests_per_window_cap_is_respected_end_to_end(tmp_path):
    items = make_items(tmp_path / "img", 9)
    state = StandinState()
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
    assert state.requests == 9
    assert state.max_requests_in_window(0.95) <= 4
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
    assert summary["captioned"] == 3 and summary["api_calls"] == 5
    _, summary = run(items, MetadataBackend(), tmp_path / "metadata")
    document = json.loads((tmp_path / "metadata" / "captions" / "img000.json").read_text())
    assert document["caption"]["thinking"] is None
    assert document["caption"]["answer"]["coordinates"]["region"] == "Testville, Nowhere"
    assert document["check"]["answer_distance_km"] == 0.0 and summary["api_calls"] == 0


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
        run(items, gemini(standin.url), tmp_path)
    assert state.api_keys == {API_KEY}  # the SDK really sent it
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


# -- kill -9 in the middle of a run ----------------------------------------------------------

CHILD = """
import json, sys
from pathlib import Path
from geolocsft.captions.backends import GeminiBackend, GenerationParams
from geolocsft.captions.prompts import PromptTemplate
from geolocsft.captions.runner import CaptionItem, RunnerSettings, caption_images
from geolocsft.captions.store import ResponseStore
from geolocsft.settings import configured
url, workdir, prompt = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
rows = json.loads((workdir / "items.json").read_text())
items = [CaptionItem(**{**row, "path": Path(row["path"])}) for row in rows]
backend = GeminiBackend("gemini-2.5-flash", configured(GenerationParams), base_url=url)
caption_images(items, backend, ResponseStore(workdir / "store"), PromptTemplate.load(prompt),
               configured(RunnerSettings, concurrency=2), workdir / "captions", progress=False)
"""


def test_resume_after_kill_9_repeats_no_finished_image(tmp_path):
    items = make_items(tmp_path / "img", 12)
    (tmp_path / "items.json").write_text(
        json.dumps([{**i.__dict__, "path": str(i.path)} for i in items])
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
        for path in (tmp_path / "captions").glob("*.json"):
            json.loads(path.read_text())  # every caption file is whole
        requests_before = state.requests
        index, summary = run(items, gemini(standin.url), tmp_path, concurrency=4)
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
        assert summary["failed_by_reason"] == {"malformed_json": 1, "batch_error": 1}
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

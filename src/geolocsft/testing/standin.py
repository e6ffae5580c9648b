"""A loopback stand-in of the Gemini REST API and of an OpenAI-compatible server.

The real SDKs (``google-genai`` through ``HttpOptions(base_url=...)``, ``openai`` through
``base_url``) talk to it over HTTP on 127.0.0.1, so tests and benchmarks exercise the real
clients, serialisation and error handling without network or cost. It answers with a valid
geo-caption whose coordinates are the ones written in the prompt, after an injectable latency,
and can inject faults: 429 with a retry delay, 503, malformed or truncated JSON, markdown
fences, blocked prompts. Every request is counted per image (by the sha256 of the image bytes).

Also a command for trying a config without paying::

    python -m geolocsft.testing.standin --port 8765 --latency 0.5
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from geolocsft.testing.loopback import BackgroundServer, LoopbackServer, serve_until_interrupted

FAULTS = ("429", "503", "malformed", "truncated", "fences", "blocked", "no_candidates")
COORDINATES = re.compile(r"latitude (-?[0-9.]+), longitude (-?[0-9.]+)")


def caption_for(lat: float, lon: float) -> dict[str, Any]:
    """A complete, schema-valid geo-caption answering (lat, lon)."""
    return {
        "thinking": {
            "regional_analysis_25km": {
                "terrain": "rolling lowland with a river valley",
                "climate": "temperate, overcast sky, green vegetation",
                "regional_development": "dense suburban settlement with farmland around it",
            },
            "local_analysis_1km": {
                "road_engineering": {
                    "surface": "smooth asphalt in good repair",
                    "markings": "white dashed centre line, solid white edge lines",
                    "guardrails": "none visible",
                    "lighting": "grey steel lamp posts on one side",
                    "drainage": "concrete kerbs with gutters",
                },
                "vegetation": {
                    "species": "deciduous trees, likely oak and plane",
                    "undergrowth": "mown grass verges",
                    "management": "regularly maintained",
                },
            },
            "buildings_and_infrastructure": "two-storey brick houses with pitched tile roofs",
            "vehicles_and_traffic": "left-hand drive cars, driving on the right",
            "terrain_and_soil": "brown loamy soil on the verges",
            "elimination_similar_regions": [
                {"region": "northern Germany", "reasons": ["kerb style", "lamp post design"]}
            ],
        },
        "answer": {
            "coordinates": {"latitude": lat, "longitude": lon, "region": "stand-in region"},
            "final_location_confirmation": {
                "confirmed_location": "stand-in region",
                "decisive_features": ["road markings", "architecture"],
                "accuracy_assessment": "within a few kilometres",
            },
        },
    }


@dataclass
class StandinState:
    """What the stand-in was asked and how it should misbehave (thread-safe counters)."""

    latency_s: float = 0.0
    retry_delay_s: float = 1.0
    #: fault kind -> probability per request (seeded)
    fault_rates: dict[str, float] = field(default_factory=dict)
    #: faults for the first requests, in order, before fault_rates apply
    fault_script: list[str] = field(default_factory=list)
    #: called with (image sha256, request number); returns a fault kind or None
    fault_for: Callable[[str, int], str | None] | None = None
    answer_offset_deg: float = 0.0
    seed: int = 0
    requests: int = 0
    by_image: Counter[str] = field(default_factory=Counter)
    faults_sent: Counter[str] = field(default_factory=Counter)
    times: list[float] = field(default_factory=list)
    api_keys: set[str] = field(default_factory=set)
    #: the body of the latest request, as JSON (to check what the SDK really sent)
    last_request: dict[str, Any] | None = None
    #: Gemini batch jobs: seconds until a job succeeds, and the jobs by id
    batch_delay_s: float = 0.0
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def next_fault(self, image_hash: str) -> tuple[int, str | None]:
        with self.lock:
            self.requests += 1
            number = self.requests
            self.by_image[image_hash] += 1
            self.times.append(time.monotonic())
            if self.fault_script:
                fault: str | None = self.fault_script.pop(0)
            elif self.fault_for is not None:
                fault = self.fault_for(image_hash, number)
            else:
                fault = None
                draw = self._rng.random()
                for kind, rate in self.fault_rates.items():
                    if draw < rate:
                        fault = kind
                        break
                    draw -= rate
            if fault in ("", "ok"):
                fault = None
            if fault:
                self.faults_sent[fault] += 1
            return number, fault

    def max_requests_in_window(self, window_s: float = 60.0) -> int:
        times = sorted(self.times)
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackServer[StandinState]
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once, as from a real server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        state = self.server.state
        key = self.headers.get("x-goog-api-key") or self.headers.get("Authorization") or ""
        with state.lock:
            state.api_keys.add(key)
            state.last_request = body
        if self.path.endswith(":generateContent"):
            self._gemini(body, state)
        elif self.path.endswith(":batchGenerateContent"):
            self._gemini_batch_create(body, state)
        elif self.path.endswith("/chat/completions"):
            self._openai(body, state)
        else:
            self._send(404, {"error": {"code": 404, "message": f"no route {self.path}"}})

    def do_GET(self) -> None:
        state = self.server.state
        match = re.search(r"/batches/([^/?:]+)$", self.path)
        if not match or match.group(1) not in state.batches:
            self._send(404, {"error": {"code": 404, "message": f"no route {self.path}"}})
            return
        job = state.batches[match.group(1)]
        done = time.monotonic() - job["created"] >= state.batch_delay_s
        metadata: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "name": job["name"],
            "model": job["model"],
            "displayName": job["displayName"],
            "state": "BATCH_STATE_SUCCEEDED" if done else "BATCH_STATE_RUNNING",
            "createTime": "2026-01-01T00:00:00Z",
        }
        if done:
            metadata["output"] = {"inlinedResponses": {"inlinedResponses": job["responses"]}}
        self._send(200, {"name": job["name"], "metadata": metadata, "done": done})

    # -- Gemini --------------------------------------------------------------------------

    @staticmethod
    def _gemini_request(request: dict[str, Any]) -> tuple[str, str]:
        parts = request.get("contents", [{}])[0].get("parts", [])
        image = next((p["inlineData"]["data"] for p in parts if "inlineData" in p), "")
        prompt = "".join(p.get("text", "") for p in parts)
        return hashlib.sha256(base64.urlsafe_b64decode(image + "==")).hexdigest(), prompt

    def _gemini_batch_create(self, body: dict[str, Any], state: StandinState) -> None:
        batch = body.get("batch", {})
        requests = batch.get("inputConfig", {}).get("requests", {}).get("requests", [])
        responses = []
        for entry in requests:
            image_hash, prompt = self._gemini_request(entry.get("request", {}))
            _, fault = state.next_fault(image_hash)
            answer: dict[str, Any] = {"metadata": entry.get("metadata", {})}
            if fault in ("429", "503"):
                answer["error"] = {"code": int(fault), "message": "injected fault"}
            else:
                answer["response"] = self._gemini_answer(prompt, image_hash, fault, state)
            responses.append(answer)
        with state.lock:
            job_id = f"standin{len(state.batches) + 1}"
            name = f"batches/{job_id}"
            model = self.path.rsplit("/", 1)[-1].split(":", 1)[0]
            state.batches[job_id] = {
                "name": name,
                "model": f"models/{model}",
                "displayName": batch.get("displayName", ""),
                "created": time.monotonic(),
                "responses": responses,
            }
        self._send(
            200,
            {
                "name": name,
                "metadata": {
                    "name": name,
                    "model": f"models/{model}",
                    "displayName": batch.get("displayName", ""),
                    "state": "BATCH_STATE_PENDING",
                },
            },
        )

    def _gemini_answer(
        self, prompt: str, image_hash: str, fault: str | None, state: StandinState
    ) -> dict[str, Any]:
        usage = {"promptTokenCount": 1290, "candidatesTokenCount": 410, "totalTokenCount": 1700}
        if fault == "blocked":
            return {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage}
        if fault == "no_candidates":
            return {"candidates": [], "usageMetadata": usage}
        text, finish = self._answer_text(prompt, fault, state)
        return {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": finish}
            ],
            "usageMetadata": usage,
            "modelVersion": "standin-gemini-001",
            "responseId": f"standin-{image_hash[:12]}",
        }

    def _gemini(self, body: dict[str, Any], state: StandinState) -> None:
        image_hash, prompt = self._gemini_request(body)
        _, fault = state.next_fault(image_hash)
        time.sleep(state.latency_s)
        if fault == "429":
            self._send(
                429,
                {
                    "error": {
                        "code": 429,
                        "message": "Resource has been exhausted (e.g. check quota).",
                        "status": "RESOURCE_EXHAUSTED",
                        "details": [
                            {
                                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                                "retryDelay": f"{state.retry_delay_s}s",
                            }
                        ],
                    }
                },
            )
            return
        if fault == "503":
            self._send(
                503,
                {
                    "error": {
                        "code": 503,
                        "message": "The model is overloaded.",
                        "status": "UNAVAILABLE",
                    }
                },
            )
            return
        self._send(200, self._gemini_answer(prompt, image_hash, fault, state))

    @staticmethod
    def _answer_text(prompt: str, fault: str | None, state: StandinState) -> tuple[str, str]:
        match = COORDINATES.search(prompt)
        lat, lon = (float(match.group(1)), float(match.group(2))) if match else (0.0, 0.0)
        lat = max(-90.0, min(90.0, lat + state.answer_offset_deg))
        text = json.dumps(caption_for(lat, lon))
        if fault == "malformed":
            return text.replace('"answer"', "answer", 1), "STOP"
        if fault == "truncated":
            return text[: len(text) // 2], "MAX_TOKENS"
        if fault == "fences":
            return f"```json\n{text}\n```", "STOP"
        return text, "STOP"

    # -- OpenAI-compatible ---------------------------------------------------------------

    def _openai(self, body: dict[str, Any], state: StandinState) -> None:
        content = body.get("messages", [{}])[0].get("content", [])
        url = next((c["image_url"]["url"] for c in content if c.get("type") == "image_url"), "")
        prompt = "".join(c.get("text", "") for c in content if c.get("type") == "text")
        image_hash = hashlib.sha256(base64.b64decode(url.split(",", 1)[-1] or "")).hexdigest()
        number, fault = state.next_fault(image_hash)
        time.sleep(state.latency_s)
        if fault == "429":
            self._send(
                429,
                {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}},
                {"retry-after": str(state.retry_delay_s)},
            )
            return
        if fault == "503":
            self._send(503, {"error": {"message": "overloaded", "type": "server_error"}})
            return
        if fault in ("blocked", "no_candidates"):
            choices: list[dict[str, Any]] = []
        else:
            text, finish = self._answer_text(prompt, fault, state)
            choices = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length" if finish == "MAX_TOKENS" else "stop",
                }
            ]
        self._send(
            200,
            {
                "id": f"chatcmpl-standin-{number}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "standin"),
                "choices": choices,
                "usage": {"prompt_tokens": 1290, "completion_tokens": 410, "total_tokens": 1700},
            },
        )


class Standin(BackgroundServer[StandinState]):
    """Start/stop the stand-in in a background thread: ``with Standin(state) as s: s.url``."""

    def __init__(self, state: StandinState | None = None, port: int = 0) -> None:
        super().__init__(LoopbackServer(_Handler, state or StandinState(), port))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help=f"inject a fault with a probability; kinds: {', '.join(FAULTS)}",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rates = {k: float(v) for k, v in (f.split("=", 1) for f in args.fault)}
    state = StandinState(latency_s=args.latency, fault_rates=rates, seed=args.seed)
    server = LoopbackServer(_Handler, state, args.port)
    print(f"stand-in listening on {server.url}", flush=True)
    serve_until_interrupted(
        server, lambda: {"requests": state.requests, "faults": dict(state.faults_sent)}
    )


if __name__ == "__main__":
    main()

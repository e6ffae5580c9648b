"""A loopback stand-in of the Gemini REST API and of an OpenAI-compatible server.

The real SDKs (``google-genai`` through ``HttpOptions(base_url=...)``, ``openai`` through
``base_url``) talk to it over HTTP on 127.0.0.1, so tests and benchmarks exercise the real
clients, serialisation and error handling without network or cost. It answers with a valid
geo-caption whose coordinates are the ones written in the prompt, after an injectable latency,
and can inject faults: 429 with a retry delay (RetryInfo), 500/503, malformed or truncated
JSON, markdown fences, blocked prompts, answers stopped for SAFETY, slow answers, and answers cut
at MAX_TOKENS while the request's output limit is below ``min_output_tokens``. Like the real
API it can enforce a requests-per-minute and a tokens-per-minute cap over a sliding window of
arrival times, answering a request over the cap with 429 and counting it (``rejected_over_cap``).
Every request is counted per image (by the sha256 of the image bytes), and every request the
server finished working on (``processed``: billed by a real API, even when the client had
stopped waiting).

Also a command for trying a config without paying::

    python -m geolocsft.testing.standin --port 8765 --latency 0.5 --rpm 250
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from geolocsft.testing.loopback import BackgroundServer, LoopbackServer, serve_until_interrupted
from geolocsft.testing.standin_state import FAULTS, StandinState

__all__ = ["FAULTS", "Standin", "StandinState", "caption_for", "main"]

#: 4xx faults: status code, Google's status name and message
REJECTIONS = {
    "400": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    "403": (403, "PERMISSION_DENIED", "Permission denied: the API key cannot use this model."),
    "404": (404, "NOT_FOUND", "models/x is not found for API version v1beta."),
}
COORDINATES = re.compile(r"latitude (-?[0-9.]+), longitude (-?[0-9.]+)")


def caption_for(lat: float, lon: float) -> dict[str, Any]:
    """A complete, schema-valid geo-caption answering (lat, lon), in the paper's field names."""
    return {
        "thinking": {
            "25km_analysis": {
                "terrain_characteristics": "rolling lowland with a river valley",
                "climate_features": "temperate, overcast sky, green vegetation",
                "regional_development": "dense suburban settlement with farmland around it",
            },
            "1km_analysis": {
                "road_engineering": {
                    "surface_materials": "smooth asphalt in good repair",
                    "line_markings": "white dashed centre line, solid white edge lines",
                    "guardrails": "none visible",
                    "lighting": "grey steel lamp posts on one side",
                    "drainage": "concrete kerbs with gutters",
                },
                "vegetation": {
                    "tree_species": "deciduous trees, likely Quercus robur and Platanus",
                    "herbaceous_plants": "mown grass verges",
                    "vegetation_management": "regularly maintained",
                },
            },
            "buildings_infrastructure": {
                "architectural_styles": "two-storey brick houses with pitched tile roofs",
                "municipal_facilities": "green waste bins, blue street name signs",
                "transportation_facilities": "a bus stop with a glass shelter",
            },
            "vehicles_traffic": {
                "vehicle_types": "compact European hatchbacks, yellow plates absent",
                "traffic_patterns": "left-hand drive cars, driving on the right",
            },
            "terrain_soil": {
                "terrain_details": "flat, slight slope towards the river",
                "soil_characteristics": "brown loamy soil on the verges",
            },
            "elimination_similar_regions": [
                {
                    "eliminated_region": "northern Germany",
                    "reasons": ["kerb style", "lamp post design"],
                }
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
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client stopped waiting (a timeout)

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
            if fault in ("429", "500", "503", "over_cap"):
                code = 429 if fault == "over_cap" else int(fault)
                answer["error"] = {"code": code, "message": "injected fault"}
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
        if fault == "safety":
            return {"candidates": [{"finishReason": "SAFETY", "index": 0}], "usageMetadata": usage}
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
        limit = body.get("generationConfig", {}).get("maxOutputTokens")
        _, fault = state.next_fault(image_hash, limit)
        if fault in ("429", "over_cap"):
            if fault == "429":
                time.sleep(state.latency_s)
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
        if fault in REJECTIONS:
            code, status, message = REJECTIONS[fault]
            self._send(code, {"error": {"code": code, "message": message, "status": status}})
            return
        if fault in ("500", "503"):
            time.sleep(state.latency_s)
            status = "UNAVAILABLE" if fault == "503" else "INTERNAL"
            message = "The model is overloaded." if fault == "503" else "Internal error."
            self._send(
                int(fault), {"error": {"code": int(fault), "message": message, "status": status}}
            )
            return
        state.work(fault)
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
        number, fault = state.next_fault(image_hash, body.get("max_tokens"))
        if fault in ("429", "over_cap"):
            if fault == "429":
                time.sleep(state.latency_s)
            self._send(
                429,
                {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}},
                {"retry-after": str(state.retry_delay_s)},
            )
            return
        if fault in REJECTIONS:
            code, _, message = REJECTIONS[fault]
            self._send(code, {"error": {"message": message, "type": "invalid_request_error"}})
            return
        if fault in ("500", "503"):
            time.sleep(state.latency_s)
            self._send(int(fault), {"error": {"message": "overloaded", "type": "server_error"}})
            return
        state.work(fault)
        if fault in ("blocked", "no_candidates"):
            choices: list[dict[str, Any]] = []
        elif fault == "safety":
            choices = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None},
                    "finish_reason": "content_filter",
                }
            ]
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
    parser.add_argument("--rpm", type=int, help="enforce requests per minute (sliding window)")
    parser.add_argument("--tpm", type=int, help="enforce tokens per minute (sliding window)")
    parser.add_argument("--slow", type=float, default=5.0, help="seconds of a 'slow' fault")
    args = parser.parse_args(argv)
    rates = {k: float(v) for k, v in (f.split("=", 1) for f in args.fault)}
    state = StandinState(
        latency_s=args.latency,
        fault_rates=rates,
        seed=args.seed,
        slow_s=args.slow,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
    )
    server = LoopbackServer(_Handler, state, args.port)
    print(f"stand-in listening on {server.url}", flush=True)
    serve_until_interrupted(
        server,
        lambda: {
            "requests": state.requests,
            "processed": state.processed,
            "rejected_over_cap": state.rejected_over_cap,
            "faults": dict(state.faults_sent),
        },
    )


if __name__ == "__main__":
    main()

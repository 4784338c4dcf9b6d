"""A small OpenAI-compatible upstream for the SDK tests, in a thread of the test process.

The built-in `mock` provider answers inside the gateway; this one sits behind a real
`provider: openai` pool, so the gateway's whole forwarding path runs (usage read from the
answer, streams relayed chunk by chunk) and the tests can count what reached the upstream.

Every chat answer reports the same usage (PROMPT_TOKENS + COMPLETION_TOKENS), so what a
key's budget is charged is known exactly.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMPT_TOKENS = 10
COMPLETION_TOKENS = 5
REPLY_WORDS = ["fake", " upstream", " says", " hi"]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: dict | None


@dataclass
class FakeUpstream:
    """What the server received; `url` is its base, e.g. http://127.0.0.1:41234."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def record(self, s: Seen) -> None:
        with self.lock:
            self.seen.append(s)

    def inference(self) -> list[Seen]:
        """The inference requests received so far (health probes left out)."""
        with self.lock:
            return [s for s in self.seen if s.method == "POST"]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _usage() -> dict:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }


def _handler(state: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # quiet: pytest shows the gateway's log, not this one

        def _json(self, status: int, obj: object) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            state.record(Seen("GET", self.path, dict(self.headers), None))
            if self.path.rstrip("/").endswith("/models"):
                models = ["gpt-4o-mini", "gpt-4o"]
                self._json(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in models
                ]})
            else:
                self._json(200, {"status": "ok"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = None
            state.record(Seen("POST", self.path, dict(self.headers), body))
            if body is None or not self.path.endswith("/chat/completions"):
                self._json(400, {"error": {"message": "fake upstream: chat only", "type": "invalid_request_error", "param": None, "code": None}})
                return
            model = body.get("model", "")
            created = int(time.time())
            if not body.get("stream"):
                self._json(200, {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(REPLY_WORDS)},
                        "finish_reason": "stop",
                    }],
                    "usage": _usage(),
                })
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()

            def chunk(choices: list, **extra: object) -> dict:
                return {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                        "created": created, "model": model, "choices": choices, **extra}

            events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
            events += [chunk([{"index": 0, "delta": {"content": w}, "finish_reason": None}]) for w in REPLY_WORDS]
            events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append(chunk([], usage=_usage()))
            frames = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
            for frame in frames:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


def start() -> FakeUpstream:
    state = FakeUpstream()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.server = server
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, name="fake-upstream", daemon=True).start()
    return state

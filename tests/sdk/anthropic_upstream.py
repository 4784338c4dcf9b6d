"""Two fake providers in one server, for the Anthropic SDK tests: under /anthropic/v1 it
speaks Anthropic's Messages API (typed SSE events, `x-api-key`), under /openai/v1 OpenAI's
chat completions. Both give the same content for the same request, so a test can compare
what the OpenAI SDK makes of an Anthropic pool (translated by the gateway) with what it
makes of an OpenAI pool.

The answer: the words of upstream.REPLY_WORDS, or, when the request offers tools, one call
of the first tool with TOOL_ARGS (its arguments streamed in two pieces). Usage is always
upstream.PROMPT_TOKENS + upstream.COMPLETION_TOKENS.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from upstream import COMPLETION_TOKENS, PROMPT_TOKENS, REPLY_WORDS

TOOL_ARGS = {"city": "Paris"}
TOOL_CALL_ID = "call_fake_1"
# The tool arguments, compact (as the gateway serializes Anthropic's `input`), in two pieces.
TOOL_ARGS_TEXT = json.dumps(TOOL_ARGS, separators=(",", ":"))
TOOL_ARGS_PIECES = [TOOL_ARGS_TEXT[:5], TOOL_ARGS_TEXT[5:]]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class DualUpstream:
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def anthropic_url(self) -> str:
        return self.url + "/anthropic/v1"

    @property
    def openai_url(self) -> str:
        return self.url + "/openai/v1"

    def last(self, prefix: str) -> Seen:
        with self.lock:
            return [s for s in self.seen if s.path.startswith(prefix)][-1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _tool_name(body: dict, openai: bool) -> str | None:
    tools = body.get("tools") or []
    if not tools:
        return None
    return tools[0]["function"]["name"] if openai else tools[0]["name"]


def _handler(state: DualUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def _json(self, status: int, obj: object) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _events(self, frames: list[bytes]) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for frame in frames:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def do_GET(self) -> None:  # noqa: N802
            self._json(200, {"data": [], "object": "list"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            with state.lock:
                state.seen.append(Seen(self.path, dict(self.headers), body))
            if self.path == "/anthropic/v1/messages":
                self._anthropic(body)
            elif self.path == "/openai/v1/chat/completions":
                self._openai(body)
            else:
                self._json(404, {"error": {"message": f"no {self.path}", "type": "invalid_request_error"}})

        # --- Anthropic's wire -------------------------------------------------------------

        def _anthropic(self, body: dict) -> None:
            model = body.get("model", "")
            tool = _tool_name(body, openai=False)
            usage = {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS}
            if not body.get("stream"):
                content = (
                    [{"type": "tool_use", "id": TOOL_CALL_ID, "name": tool, "input": TOOL_ARGS}]
                    if tool
                    else [{"type": "text", "text": "".join(REPLY_WORDS)}]
                )
                self._json(200, {
                    "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                    "content": content, "stop_reason": "tool_use" if tool else "end_turn",
                    "stop_sequence": None, "usage": usage,
                })
                return
            events = [{"type": "message_start", "message": {
                "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}}]
            if tool:
                events.append({"type": "content_block_start", "index": 0, "content_block": {
                    "type": "tool_use", "id": TOOL_CALL_ID, "name": tool, "input": {}}})
                events += [{"type": "content_block_delta", "index": 0,
                            "delta": {"type": "input_json_delta", "partial_json": p}} for p in TOOL_ARGS_PIECES]
            else:
                events.append({"type": "content_block_start", "index": 0,
                               "content_block": {"type": "text", "text": ""}})
                events.append({"type": "ping"})
                events += [{"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": w}} for w in REPLY_WORDS]
            events.append({"type": "content_block_stop", "index": 0})
            events.append({"type": "message_delta",
                           "delta": {"stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": COMPLETION_TOKENS}})
            events.append({"type": "message_stop"})
            self._events([f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events])

        # --- OpenAI's wire, the same content ------------------------------------------------

        def _openai(self, body: dict) -> None:
            model = body.get("model", "")
            tool = _tool_name(body, openai=True)
            created = int(time.time())
            usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                     "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}
            call = {"id": TOOL_CALL_ID, "type": "function",
                    "function": {"name": tool, "arguments": TOOL_ARGS_TEXT}}
            if not body.get("stream"):
                message = ({"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
                           if tool else
                           {"role": "assistant", "content": "".join(REPLY_WORDS), "refusal": None})
                self._json(200, {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": created,
                    "model": model, "usage": usage,
                    "choices": [{"index": 0, "message": message, "logprobs": None,
                                 "finish_reason": "tool_calls" if tool else "stop"}],
                })
                return

            def chunk(delta: dict, finish: str | None = None) -> dict:
                return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                        "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                     "finish_reason": finish}]}

            chunks = [chunk({"role": "assistant", "content": ""})]
            if tool:
                chunks.append(chunk({"tool_calls": [{"index": 0, "id": TOOL_CALL_ID, "type": "function",
                                                     "function": {"name": tool, "arguments": ""}}]}))
                chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
                           for p in TOOL_ARGS_PIECES]
            else:
                chunks += [chunk({"content": w}) for w in REPLY_WORDS]
            chunks.append(chunk({}, "tool_calls" if tool else "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                chunks.append({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                               "created": created, "model": model, "choices": [], "usage": usage})
            self._events([f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"])

    return Handler


def start() -> DualUpstream:
    state = DualUpstream()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.server = server
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, name="dual-upstream", daemon=True).start()
    return state

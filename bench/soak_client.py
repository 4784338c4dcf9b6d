#!/usr/bin/env python3
"""The soak run's client (bench/soak.sh): bounded mixed traffic against one gateway on
loopback, every request accounted for.

    soak_client.py --port PORT --key KEY --seconds N --rate R --concurrency C --out OUT.json

Raw HTTP/1.1 over asyncio streams, standard library only. Each request carries its own
`x-request-id` (soak-<n>), which the gateway logs, so soak.sh can match the client's
record of every request with the access log. The mix (weights below): non-streamed and
streamed chat on a pool with a healthy, a flaky and a dead endpoint; streams the client
drops after the first event, or right after sending; a model served only by the flaky
endpoint (its failures reach the client); a model whose only endpoint is dead (fallback);
bad requests. Keep-alive connections, with one request in five asking to close.

Every request ends as one of:
  ok            2xx and complete (a stream up to `data: [DONE]`, a JSON body)
  openai_error  an OpenAI error body (`{"error": {"message", "type", ...}}`) with a
                non-2xx status, or an error event in a stream that then ends
  disconnected  the client hung up on purpose
  lost          anything else: refused, reset, timed out, malformed, cut without an error

Bounded: requests start only until --seconds have passed (at most --rate per second in
all), each has a --timeout, and the run stops waiting after --seconds + 2 * --timeout.
"""

import argparse
import asyncio
import json
import random
import sys
import time

KINDS = [
    # name, weight, model, stream, how it ends
    ("chat", 30, "soak", False, None),
    ("stream", 30, "soak", True, None),
    ("stream_drop", 10, "soak", True, "drop_mid_stream"),
    ("stream_drop_early", 3, "soak", True, "drop_after_send"),
    ("flaky_chat", 10, "soak-flaky", False, None),
    ("flaky_stream", 7, "soak-flaky", True, None),
    ("fallback", 5, "soak-fallback", False, None),
    ("bad_json", 3, "soak", False, "bad_json"),
    ("unknown_model", 2, "no-such-model", False, None),
]


def body_for(model, stream, n):
    msg = {"model": model,
           "messages": [{"role": "user", "content": f"soak request {n}: say something"}],
           "max_tokens": 32}
    if stream:
        msg["stream"] = True
        if n % 2:
            msg["stream_options"] = {"include_usage": True}
    return json.dumps(msg).encode()


def is_openai_error(obj):
    if not isinstance(obj, dict) or not isinstance(obj.get("error"), dict):
        return False
    e = obj["error"]
    return isinstance(e.get("message"), str) and isinstance(e.get("type"), str)


class Lost(Exception):
    pass


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise Lost(f"bad status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


async def body_chunks(reader, headers):
    """Yields the body in pieces as they arrive (chunked or Content-Length)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    elif "content-length" in headers:
        n = int(headers["content-length"])
        if n:
            yield await reader.readexactly(n)
    else:
        raise Lost("response without a length")


class Conn:
    def __init__(self, port):
        self.port = port
        self.reader = None
        self.writer = None

    async def open(self):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    def drop(self, abort=False):
        if self.writer is not None:
            if abort:
                self.writer.transport.abort()
            else:
                self.writer.close()
        self.reader = self.writer = None


async def one_request(conn, args, n, kind):
    name, _, model, stream, how = kind
    rid = f"soak-{n}"
    body = b'{"model": "soak", "messages": [' if how == "bad_json" else body_for(model, stream, n)
    close = random.random() < 0.2
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
            f"Authorization: Bearer {args.key}\r\nContent-Type: application/json\r\n"
            f"x-request-id: {rid}\r\nContent-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()
    await conn.open()
    conn.writer.write(head + body)
    await conn.writer.drain()
    if how == "drop_after_send":
        # A clean close (FIN) once the request is out: the gateway reads the whole request,
        # so it is logged; an abort (RST) could discard it unread, as if never sent.
        conn.drop()
        return "disconnected", 0, "after send"
    status, headers = await read_head(conn.reader)
    if headers.get("x-request-id") != rid:
        raise Lost(f"x-request-id {headers.get('x-request-id')!r}, sent {rid}")
    keep = not close and headers.get("connection", "").lower() != "close"
    sse = headers.get("content-type", "").startswith("text/event-stream")
    if not sse:
        data = b"".join([c async for c in body_chunks(conn.reader, headers)])
        if not keep:
            conn.drop()
        try:
            obj = json.loads(data)
        except ValueError:
            raise Lost(f"status {status}, body not JSON: {data[:200]!r}")
        if 200 <= status < 300:
            if stream or not isinstance(obj.get("choices"), list):
                raise Lost(f"status {status}, unexpected body {data[:200]!r}")
            return "ok", status, ""
        if is_openai_error(obj):
            return "openai_error", status, obj["error"].get("code") or obj["error"]["type"]
        raise Lost(f"status {status}, not an OpenAI error: {data[:200]!r}")
    if status != 200:
        raise Lost(f"an event stream with status {status}")
    buf = b""
    events = 0
    done = error = False
    cut = None
    try:
        async for chunk in body_chunks(conn.reader, headers):
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                data = b"\n".join(l[5:].lstrip(b" ") for l in event.split(b"\n")
                                  if l.startswith(b"data:"))
                if not data:
                    continue
                events += 1
                if done or error:
                    raise Lost("an event after the end of the stream")
                if data == b"[DONE]":
                    done = True
                else:
                    try:
                        obj = json.loads(data)
                    except ValueError:
                        raise Lost(f"event not JSON: {data[:200]!r}")
                    if "error" in obj:
                        if not is_openai_error(obj):
                            raise Lost(f"error event not OpenAI-shaped: {data[:200]!r}")
                        error = obj["error"].get("code") or obj["error"]["type"]
                if how == "drop_mid_stream" and events == 1 and not done and not error:
                    conn.drop(abort=True)
                    return "disconnected", status, "mid stream"
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        # The connection closed before the body's end: fine after an error event (the
        # gateway closes such a stream), a lost request otherwise.
        cut = e
        conn.drop(abort=True)
    if error:
        conn.drop()
        return "openai_error", status, f"in stream: {error}" + (" (then closed)" if cut else "")
    if cut is not None:
        raise Lost(f"stream cut after {events} events without an error event: {cut!r}")
    if not keep:
        conn.drop()
    if done:
        return "ok", status, ""
    raise Lost(f"stream ended after {events} events without [DONE] or an error")


async def worker(wid, args, state, results):
    conn = Conn(args.port)
    rng = random.Random(args.seed * 1000 + wid)
    weights = [k[1] for k in KINDS]
    while True:
        n = await state.next_slot()
        if n is None:
            break
        kind = rng.choices(KINDS, weights)[0]
        started = time.monotonic()
        try:
            outcome, status, detail = await asyncio.wait_for(
                one_request(conn, args, n, kind), args.timeout)
        except asyncio.TimeoutError:
            outcome, status, detail = "lost", 0, "timeout"
            conn.drop(abort=True)
        except (Lost, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as e:
            # Refused, reset, cut or malformed: lost (the detail says which), and the
            # connection is not reused.
            outcome, status, detail = "lost", 0, f"{type(e).__name__}: {e}"
            conn.drop(abort=True)
        results.append({"id": f"soak-{n}", "kind": kind[0], "outcome": outcome,
                        "status": status, "detail": str(detail)[:300],
                        "t": round(started - state.t0, 3),
                        "ms": round((time.monotonic() - started) * 1000, 2)})
    conn.drop()


class Pacer:
    """Hands out request numbers at most `rate` per second until `seconds` have passed."""

    def __init__(self, rate, seconds):
        self.rate = rate
        self.seconds = seconds
        self.t0 = time.monotonic()
        self.issued = 0
        self.lock = asyncio.Lock()

    async def next_slot(self):
        async with self.lock:
            due = self.t0 + self.issued / self.rate
            now = time.monotonic()
            if due - self.t0 >= self.seconds or now - self.t0 >= self.seconds:
                return None
            if due > now:
                await asyncio.sleep(due - now)
            self.issued += 1
            return self.issued


async def main_async(args):
    random.seed(args.seed)
    state = Pacer(args.rate, args.seconds)
    results = []
    tasks = [asyncio.create_task(worker(i, args, state, results)) for i in range(args.concurrency)]
    done, pending = await asyncio.wait(tasks, timeout=args.seconds + 2 * args.timeout + 5)
    for t in pending:
        t.cancel()
    for t in done:
        if t.exception() is not None:
            print(f"soak_client: a worker failed: {t.exception()!r}", file=sys.stderr)
            return None
    return results, len(pending)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--rate", type=float, default=150)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    got = asyncio.run(main_async(args))
    if got is None:
        return 1
    results, stuck = got
    counts = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    summary = {"requests": len(results), "outcomes": counts, "stuck_workers": stuck,
               "settings": {k: getattr(args, k) for k in
                            ("seconds", "rate", "concurrency", "timeout", "seed")},
               "kinds": {k[0]: {"weight": k[1], "model": k[2], "stream": k[3], "end": k[4]}
                         for k in KINDS}}
    with open(args.out, "w") as f:
        json.dump({"summary": summary, "requests": results}, f)
    print(json.dumps(summary))
    return 0 if stuck == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

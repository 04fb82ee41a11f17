"""A scripted OpenAI-compatible chat-completions server on a loopback socket, for fault
injection (429 with Retry-After, 500, answers slower than the timeout, malformed answers)
and for measuring judge concurrency at a fixed latency."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# What a scripted step does: ("ok", None), ("429", retry_after_s), ("500", None),
# ("slow", seconds), ("garbage", None) answers text with no verdict JSON.
Step = tuple[str, float | None]


def section(prompt: str, name: str) -> str:
    """The text the judge prompt fenced as ``name`` (e.g. 'RESPONSE A')."""
    match = re.search(rf"BEGIN {name} (\w+)\n(.*)\nEND {name} \1\n", prompt, re.DOTALL)
    return match.group(2) if match else ""


def prefer_marker(prompt: str) -> dict:
    """A position-fair judge: prefers the response containing GOOD."""
    a, b = section(prompt, "RESPONSE A"), section(prompt, "RESPONSE B")
    verdict = "A" if "GOOD" in a and "GOOD" not in b else "B" if "GOOD" in b and "GOOD" not in a else "tie"
    return {"reasoning": "marker", "verdict": verdict, "confidence": 0.9}


class OpenAIStub:
    def __init__(self, decide: Callable[[str], dict] = prefer_marker, latency_s: float = 0.0):
        self.decide = decide
        self.latency_s = latency_s
        self.script: list[Step] = []
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append(body)
                    step = stub.script.pop(0) if stub.script else ("ok", None)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    stub._answer(self, body, step)
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _answer(self, handler, body: dict, step: Step) -> None:
        kind, value = step
        if self.latency_s:
            time.sleep(self.latency_s)
        if kind == "429":
            return self._send(handler, 429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"Retry-After": str(value)})
        if kind == "500":
            return self._send(handler, 500, {"error": {"message": "boom", "type": "server_error"}})
        if kind == "slow":
            time.sleep(value)
        prompt = body["messages"][0]["content"]
        content = "I think the first one is nicer." if kind == "garbage" else json.dumps(self.decide(prompt))
        self._send(handler, 200, {
            "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": 20, "total_tokens": len(prompt) // 4 + 20},
        })

    @staticmethod
    def _send(handler, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

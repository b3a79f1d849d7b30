"""Downloading from a hostile server on 127.0.0.1 (issue 11): truncated bodies, wrong lengths,
HTML error pages, 404s, 5xx and stalls. A bounded timeout, retries with backoff, one clear
error, no partial file in the cache, and an interrupted download never poisons the next run."""

from __future__ import annotations

import http.server
import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from qdcore import InputError
import qdplugins.datasets as ds


def npy_bytes(n=7) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).integers(0, 256, (n, 784), dtype=np.uint8))
    return buf.getvalue()


BODY = npy_bytes()


class Hostile:
    """A server that plays `script[i]` on request i (the last one repeats)."""

    def __init__(self, *script: str):
        self.script, self.requests = list(script), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                act = outer.script[min(len(outer.requests), len(outer.script)) - 1]
                if act == "ok":
                    self._send(200, BODY, "application/octet-stream")
                elif act == "404":
                    self._send(404, b"<html>Not Found</html>", "text/html")
                elif act == "500":
                    self._send(500, b"oops", "text/plain")
                elif act == "html":
                    self._send(200, b"<!DOCTYPE html><html><body>Sign in</body></html>", "text/html; charset=utf-8")
                elif act == "truncated":  # the connection drops halfway
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(BODY)))
                    self.end_headers()
                    self.wfile.write(BODY[: len(BODY) // 2])
                    self.close_connection = True
                elif act == "wrong length":  # claims fewer bytes than the file has
                    self._send(200, BODY, "application/octet-stream", length=len(BODY) - 100)
                elif act == "stall":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(BODY)))
                    self.end_headers()
                    self.wfile.write(BODY[:10])
                    self.wfile.flush()
                    time.sleep(3)

            def _send(self, code, body, ctype, length=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body[:length] if length is not None else body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fast(monkeypatch):
    """Short timeout and backoff so the suite stays quick; the logic is the one users get."""
    monkeypatch.setattr(ds, "DOWNLOAD_TIMEOUT", 0.5)
    monkeypatch.setattr(ds, "DOWNLOAD_BACKOFF", 0.01)
    sleeps = []

    class Clock:  # only datasets' view of time: the server's threads sleep for real
        time = staticmethod(time.time)

        @staticmethod
        def sleep(seconds):
            sleeps.append(seconds)
            time.sleep(seconds)

    monkeypatch.setattr(ds, "time", Clock)
    return sleeps


def fetch(server, tmp_path) -> Path:
    return ds.download(server.url + "numpy_bitmap/apple.npy", tmp_path / "cache" / "apple.npy", quiet=True)


def nothing_left(tmp_path) -> bool:
    folder = tmp_path / "cache"
    return not folder.exists() or list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "act, words, tries",
    [
        ("404", "HTTP 404", 1),  # a missing file is not retried
        ("html", "an HTML page", 1),
        ("500", "HTTP 500", 3),
        ("truncated", "stopped after", 3),
        ("wrong length", "bytes", 3),
        ("stall", "timed out", 3),
    ],
)
def test_a_hostile_server_gives_one_clear_error_and_no_file(tmp_path, fast, act, words, tries):
    with Hostile(act) as server:
        start = time.monotonic()
        with pytest.raises(InputError, match=words) as e:
            fetch(server, tmp_path)
        elapsed = time.monotonic() - start
    assert len(server.requests) == tries
    assert "\n" not in str(e.value)
    assert nothing_left(tmp_path)
    assert elapsed < 10  # bounded: attempts x timeout, plus backoff
    if tries > 1:
        assert fast[:2] == [0.01, 0.02]  # exponential backoff between attempts


@pytest.mark.parametrize("first", ["500", "truncated", "stall", "wrong length"])
def test_a_failed_attempt_is_retried_and_the_file_arrives_whole(tmp_path, fast, first):
    with Hostile(first, "ok") as server:
        path = fetch(server, tmp_path)
    assert path.read_bytes() == BODY and len(server.requests) == 2
    assert [p.name for p in path.parent.iterdir()] == ["apple.npy"]


def test_an_interrupted_download_does_not_poison_the_next_run(tmp_path, fast):
    # What kill -9 mid-download leaves: a temporary file beside the final name.
    folder = tmp_path / "cache"
    folder.mkdir()
    stale = folder / ".apple.x1y2.npy.part.npy"
    stale.write_bytes(BODY[:100])
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    live = folder / ".apple.a3b4.npy.part.npy"  # another process downloading right now: kept
    live.write_bytes(BODY[:10])
    with Hostile("ok") as server:
        assert fetch(server, tmp_path).read_bytes() == BODY
    assert sorted(p.name for p in folder.iterdir()) == [live.name, "apple.npy"]

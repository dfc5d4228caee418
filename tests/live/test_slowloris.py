"""Slow clients (slowloris) against deploy/nginx.conf in front of gunicorn, and against gunicorn alone.

gunicorn's sync workers read a request's headers one connection at a time with no read timeout,
so as many slow clients as there are workers hold all of them. The README tells operators who
expose the server to put the shipped nginx config in front; these tests show both halves: nginx
keeps serving predictions while 50 slow clients hold connections to it (sending their headers,
or their bodies, a byte a second), and gunicorn alone with 2 workers answers nothing while 2+
slow clients hold it (and recovers when they leave).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from tests.live.nginx import MISSING, NGINX, running_nginx

pytestmark = pytest.mark.skipif(NGINX is None, reason=MISSING)

IRIS = {"model_id": "iris", "features": [5.1, 3.5, 1.4, 0.2]}
HOLD_SECONDS = 10.0  # every slow client is closed by then, whatever happens
TRICKLE_SECONDS = 1.0


HEADER = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Slow-%d: "
BODY = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Slow: %d\r\nContent-Length: 4096\r\n\r\n{"


class SlowClients:
    """Raw loopback sockets that send the start of a request (by default a partial header), then
    one more byte every second, never finishing. A background thread trickles the bytes until
    ``close`` or ``HOLD_SECONDS`` after the start, whichever comes first; ``close`` always closes
    them all."""

    def __init__(self, port: int, count: int, start: bytes = HEADER) -> None:
        self.port = port
        self.count = count
        self.start = start
        self.sockets: list[socket.socket] = []
        self.trickled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._deadline = 0.0

    def __enter__(self) -> SlowClients:
        self._deadline = time.monotonic() + HOLD_SECONDS
        try:
            for i in range(self.count):
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                sock.sendall(self.start % i)
                sock.setblocking(False)  # one-byte sends never wait; held() peeks without waiting
                self.sockets.append(sock)
        except BaseException:
            self.close()
            raise
        self._thread.start()
        return self

    def _trickle(self) -> None:
        while not self._stop.wait(TRICKLE_SECONDS) and time.monotonic() < self._deadline:
            for sock in self.sockets:
                try:
                    sock.send(b" ")  # a header value's next character, or JSON whitespace
                except OSError:
                    pass  # closed by the peer: held() reports it
            self.trickled += 1

    def held(self) -> list[str]:
        """The state of each client: 'held' (open, nothing received), 'closed', or the first bytes received."""
        states = []
        for sock in self.sockets:
            try:
                data = sock.recv(64, socket.MSG_DONTWAIT)
            except BlockingIOError:
                states.append("held")
            except OSError as exc:
                states.append(f"error {exc.errno}")
            else:
                states.append(repr(data) if data else "closed")
        return states

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for sock in self.sockets:
            sock.close()

    def __exit__(self, *exc) -> None:
        self.close()


def timed_predict(url: str, timeout: float = 5) -> tuple[int, float]:
    """One prediction on a fresh connection: its status and how long it took."""
    started = time.monotonic()
    response = requests.post(f"{url}/predict", json=IRIS, timeout=timeout, headers={"Connection": "close"})
    elapsed = time.monotonic() - started
    if response.status_code == 200:
        assert response.json()["prediction"] == [0]
    return response.status_code, elapsed


@pytest.mark.parametrize("start", [HEADER, BODY], ids=["slow-header", "slow-body"])
def test_nginx_keeps_serving_predictions_while_50_slow_clients_hold_connections(make_server, tmp_path, start):
    server = make_server(workers=2)
    directory = tmp_path / "nginx"
    directory.mkdir()
    with running_nginx(directory, server.port) as (url, _):
        assert timed_predict(url)[0] == 200, "nginx in front of the server answers before the test starts"
        with SlowClients(int(url.rsplit(":", 1)[1]), 50, start) as slow:
            time.sleep(2.2)  # two trickles: every slow client is connected and mid-request
            assert slow.held().count("held") == 50
            results = []
            for _ in range(20):  # spread over ~5 s while the slow clients keep trickling
                results.append(timed_predict(url))
                time.sleep(0.25)
            states = slow.held()
            trickled = slow.trickled
        timings = [elapsed for _, elapsed in results]
        kind = "header" if start is HEADER else "body"
        print(f"\nthrough nginx, 50 slow-{kind} clients held ({trickled} trickles): 20 predictions "
              f"min {min(timings) * 1000:.1f} ms, max {max(timings) * 1000:.1f} ms, "
              f"mean {sum(timings) / len(timings) * 1000:.1f} ms")
        assert [status for status, _ in results] == [200] * 20
        assert max(timings) < 1.0, timings
        assert trickled >= 6, "the slow clients kept sending while the predictions ran"
        assert states == ["held"] * 50, "every slow client was still connected, unanswered, at the end"


def test_gunicorn_alone_is_held_by_as_many_slow_clients_as_workers(make_server):
    server = make_server(workers=2)
    assert timed_predict(server.url())[0] == 200
    with SlowClients(server.port, 4):
        time.sleep(0.5)  # both sync workers accept a slow client and block reading its header
        started = time.monotonic()
        with pytest.raises(requests.ReadTimeout):
            requests.post(server.url("/predict"), json=IRIS, timeout=(2, 3))
        waited = time.monotonic() - started
        assert len(server.worker_pids()) == 2, "the workers are alive, just busy"
        print(f"\ngunicorn alone, 2 workers, 4 slow clients: no answer in {waited:.1f} s (client timeout)")
    # The slow clients leave: the workers read their end of stream and serve again.
    deadline = time.monotonic() + 10
    while True:
        try:
            status, elapsed = timed_predict(server.url(), timeout=2)
            break
        except requests.RequestException:
            assert time.monotonic() < deadline, "gunicorn did not recover after the slow clients left"
    assert status == 200
    print(f"after the slow clients left: a prediction in {elapsed * 1000:.1f} ms")

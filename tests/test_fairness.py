"""The fair share between clients, piece by piece: the fair queue, the batcher's round robin, who a client is
(API key, address, a proxy's header only when named), and /health when the process cannot make progress.
The whole, against a real server, is in test_serve_hostile.py and bench.serve_load --attack."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import numpy as np
from clipedge.fair import FairQueue
from clipedge.options import LoadOptions
from clipedge.serve.batcher import DynamicBatcher
from clipedge.serve.config import ServeConfig
from clipedge.serve.guard import Exchange, Guard, api_keys


def test_a_client_that_was_idle_goes_ahead_of_a_busy_ones_queue():
    q = FairQueue()
    for i in range(8):
        q.push("heavy", f"h{i}", cost=30)
    first = q.pop()
    q.push("light", "l0", cost=1)  # arrives while the heavy client's queue is long
    assert [first, q.pop(), q.pop()] == ["h0", "l0", "h1"]
    q.push("light", "l1", cost=1)
    q.push("light", "l2", cost=1)
    order = [q.pop() for _ in range(len(q))]
    assert order.index("l1") < order.index("h3") and order.index("l2") < order.index("h4")
    assert [x for x in order if x.startswith("h")] == [f"h{i}" for i in range(2, 8)]  # each client's in order


def test_two_busy_clients_share_by_cost():
    q = FairQueue()
    for i in range(6):
        q.push("a", f"a{i}", cost=2)  # twice as costly
        q.push("b", f"b{i}", cost=1)
    order = [q.pop() for _ in range(12)]
    taken = order[:9]
    assert abs(2 * sum(x.startswith("a") for x in taken) - sum(x.startswith("b") for x in taken)) <= 2
    assert q.pop() is None
    q.push("a", "big", cost=5)
    q.push("b", "small", cost=1)
    assert q.pop(lambda job: job != "big") == "small" and q.pop() == "big"  # what does not fit waits its turn


def test_the_batcher_takes_clients_round_robin():
    seen: list[list[int]] = []

    def tower(x: np.ndarray) -> np.ndarray:
        seen.append(x[:, 0, 0, 0].astype(int).tolist())
        return x[:, :1, 0, 0]

    async def main():
        b = DynamicBatcher(tower, ThreadPoolExecutor(1), max_batch=4)
        b.start()
        gate = asyncio.ensure_future(b.submit(np.full((4, 1, 1, 1), 0.0, np.float32), "first"))
        await asyncio.sleep(0)  # the first batch is on the tower: the rest queue behind it
        heavy = [asyncio.ensure_future(b.submit(np.full((2, 1, 1, 1), 1.0 + i, np.float32), "heavy")) for i in range(3)]
        light = asyncio.ensure_future(b.submit(np.full((1, 1, 1, 1), 9.0, np.float32), "light"))
        await asyncio.gather(gate, *heavy, light)
        await b.stop()

    asyncio.run(main())
    assert seen[0] == [0, 0, 0, 0]
    assert 9 in seen[1], seen  # the light client's image rides the next batch, beside the heavy one's first


def guard(**config) -> Guard:
    state = SimpleNamespace(config=ServeConfig(load=LoadOptions(), **config))
    return Guard(None, state)


def exchange(g: Guard, headers: dict[str, str], peer: str = "10.1.2.3") -> Exchange:
    scope = {"type": "http", "path": "/score", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    scope["client"] = (peer, 4321)
    return Exchange(g, scope, None, None)


def test_who_a_client_is():
    assert api_keys("k1, k2 k3") == ("k1", "k2", "k3") and api_keys(None) == ()
    keyed = guard(api_key="k1,k2")
    for key, who in (("k1", "key 0"), ("k2", "key 1")):
        x = exchange(keyed, {"authorization": f"Bearer {key}"})
        assert keyed._client(x, keyed._key(x.headers)) == who  # the key, whatever the address
    assert keyed._key(exchange(keyed, {"x-api-key": "k3"}).headers) is None
    plain = guard()
    x = exchange(plain, {"x-forwarded-for": "203.0.113.9"})
    assert plain._client(x, None) == "10.1.2.3"  # a header nobody vouches for is not an identity
    proxied = guard(client_header="X-Forwarded-For")
    x = exchange(proxied, {"x-forwarded-for": "203.0.113.9, 10.0.0.1"})
    assert proxied._client(x, None) == "203.0.113.9"  # behind the named proxy: the address it saw
    assert proxied._client(exchange(proxied, {}), None) == "10.1.2.3"


def test_health_fails_when_the_process_cannot_make_progress():
    from clipedge.serve.app import create_app

    app = create_app(ServeConfig(load=LoadOptions(bundle="models/demo")))  # no lifespan: nothing loads
    state = app.state.clipedge

    async def health() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/health")

    assert asyncio.run(health()).status_code == 200
    state.batcher = SimpleNamespace(running_since=time.monotonic() - 120)
    r = asyncio.run(health())
    assert r.status_code == 503 and "running one batch for 120 s" in r.json()["message"]
    state.batcher = SimpleNamespace(running_since=None)
    state.decoders = SimpleNamespace(failing_for=lambda: 75.0)
    r = asyncio.run(health())
    assert r.status_code == 503 and "no image decoder could start for 75 s" in r.json()["message"]
    state.decoders = None
    state.shutdown()

"""Issue 20: many watchers of one job share one read per change (event streams and ETag long-polls).

Everything runs in one event loop against the ASGI app: 100 event streams (raw ASGI, so each event is seen
as it is sent) and 100 long-poll loops (httpx over ASGITransport) on a job that changes K times. The job is
changed again only once every watcher has seen the previous change, so every watcher must see every
version. Counted, not timed: the rows the watcher reads (one per change, not one per watcher and change)
and the per-request reads (only each client's first).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.core.config import Settings
from app.db import get_engine, session_scope
from app.main import create_app
from app.models import Job
from app.services import jobs as job_service
from app.services import keys as key_service

N_STREAMS = 100
N_POLLS = 100
K = 5  # changes after the first state; the last one finishes the job
TIMEOUT = 120  # generous: only a hang fails


def _bump(url: str, job_id: str, **values: Any) -> None:
    with get_engine(url).begin() as conn:
        conn.execute(sa.update(Job).where(Job.id == job_id).values(version=Job.version + 1, **values))


def _key(settings: Settings, tenant: str) -> str:
    with session_scope(get_engine(settings.database_url), write=True) as s:
        return key_service.create_key(s, f"{tenant}-key", tenant=tenant)[1]


async def _stream(app: Any, path: str, token: str, on_event: Callable[[str, dict[str, Any]], None]) -> int:
    """GET ``path`` as an event stream straight through ASGI; ``on_event(event, data)`` as each arrives.
    Returns the status."""
    started: list[int] = []
    closed = asyncio.Event()
    first = True
    buf = b""

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await closed.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal buf
        if message["type"] == "http.response.start":
            started.append(message["status"])
        elif message["type"] == "http.response.body":
            buf += message.get("body", b"")
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                event, data = None, None
                for line in block.decode().splitlines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                if event is not None:
                    on_event(event, data)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"accept", b"text/event-stream"),
                         (b"authorization", f"Bearer {token}".encode())],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80), "state": {}}
    try:
        await app(scope, receive, send)
    finally:
        closed.set()
    return started[0]


@pytest.fixture
def counted_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every per-request read of a job (``GET /jobs/{id}`` and the stream's first read go through it)."""
    calls: list[str] = []
    real = job_service.read_job

    def read_job(session: Any, job_id: str, **kw: Any) -> Any:
        calls.append(job_id)
        return real(session, job_id, **kw)

    monkeypatch.setattr(job_service, "read_job", read_job)
    return calls


def test_many_watchers_share_one_read_per_change(settings, spec_dict, counted_reads):
    app = create_app(settings)
    url = settings.database_url
    a, b = _key(settings, "a"), _key(settings, "b")

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=TIMEOUT) as http:
            ha, hb = {"Authorization": f"Bearer {a}"}, {"Authorization": f"Bearer {b}"}
            r = await http.post("/jobs", json=spec_dict(), headers={**ha, "X-Requested-With": "test"})
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            seen_streams: list[list[int]] = [[] for _ in range(N_STREAMS)]
            seen_polls: list[list[int]] = [[] for _ in range(N_POLLS)]
            finished = [0]
            progress = asyncio.Condition()

            async def note(seen: list[int], version: int) -> None:
                async with progress:
                    seen.append(version)
                    progress.notify_all()

            def on_event(i: int) -> Callable[[str, dict[str, Any]], None]:
                def handle(event: str, data: dict[str, Any]) -> None:
                    if event == "progress":
                        asyncio.get_running_loop().create_task(note(seen_streams[i], data["version"]))
                    elif event == "finished":
                        finished[0] += 1
                return handle

            async def poller(i: int) -> None:
                r = await http.get(f"/jobs/{job_id}", headers=ha)
                etag = r.headers["etag"]
                await note(seen_polls[i], r.json()["version"])
                while True:
                    r = await http.get(f"/jobs/{job_id}", params={"wait": 30}, headers={**ha, "If-None-Match": etag})
                    if r.status_code == 304:
                        continue
                    assert r.status_code == 200, r.text
                    etag, body = r.headers["etag"], r.json()
                    await note(seen_polls[i], body["version"])
                    if body["status"] == "succeeded":
                        return

            async def all_saw(version: int) -> None:
                async with progress:
                    await asyncio.wait_for(progress.wait_for(lambda: all(
                        s and s[-1] >= version for s in seen_streams + seen_polls)), TIMEOUT)

            streams = [asyncio.create_task(_stream(app, f"/jobs/{job_id}/events", a, on_event(i)))
                       for i in range(N_STREAMS)]
            async with progress:
                await asyncio.wait_for(progress.wait_for(lambda: all(seen_streams)), TIMEOUT)
            watcher = app.state.job_watcher
            for _ in range(int(TIMEOUT / 0.05)):  # the streams wait: the watcher has its first shared read
                if watcher.current(job_id) is not None:
                    break
                await asyncio.sleep(0.05)
            polls = [asyncio.create_task(poller(i)) for i in range(N_POLLS)]
            await all_saw(0)

            # another tenant: 404 from the shared read (no read of its own), even with the right ETag
            etag = watcher.current(job_id).etag
            before = len(counted_reads)
            r = await http.get(f"/jobs/{job_id}", params={"wait": 5}, headers={**hb, "If-None-Match": etag})
            assert r.status_code == 404 and "version" not in r.text
            assert len(counted_reads) == before
            assert await _stream(app, f"/jobs/{job_id}/events", b, lambda *_: pytest.fail("b saw an event")) == 404

            reads_before, rows_before = len(counted_reads), watcher.reads
            for version in range(1, K + 1):
                last = version == K
                await asyncio.to_thread(_bump, url, job_id, progress={"complete": version, "counted": version},
                                        **({"status": "succeeded"} if last else {}))
                await all_saw(version)
            await asyncio.wait_for(asyncio.gather(*streams, *polls), TIMEOUT)
            assert [s.result() for s in streams] == [200] * N_STREAMS

            # every watcher saw every version, in order, once
            assert all(s == list(range(K + 1)) for s in seen_streams), seen_streams[:3]
            assert all(s == list(range(K + 1)) for s in seen_polls), seen_polls[:3]
            assert finished[0] == N_STREAMS
            # one row read per change for all 200 watchers, not one per watcher and change (was 200 * K)
            assert watcher.reads - rows_before == K
            assert len(counted_reads) - reads_before == 0

    asyncio.run(main())


def test_long_poll_from_the_shared_read_answers_like_a_read(client, spec_dict, settings):
    """A long-poll answered from the watcher's read has the same body as a plain read; an older ETag gets
    the shared read at once; a job deleted while watched is a 404."""
    job_id = client.post("/jobs", json=spec_dict()).json()["id"]
    old = client.get(f"/jobs/{job_id}").headers["etag"]
    _bump(settings.database_url, job_id, progress={"complete": 1, "counted": 1})
    r = client.get(f"/jobs/{job_id}", params={"wait": 10}, headers={"If-None-Match": old})
    assert r.status_code == 200
    watcher = client.app.state.job_watcher
    plain = client.get(f"/jobs/{job_id}")
    assert r.json() == plain.json() and r.headers["etag"] == plain.headers["etag"]
    # keep the job watched (a waiter) and bump: the next long-poll with the old ETag is answered from it
    import threading

    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(client.get(
        f"/jobs/{job_id}", params={"wait": 20}, headers={"If-None-Match": r.headers["etag"]}).status_code))
    t.start()
    _bump(settings.database_url, job_id, progress={"complete": 2, "counted": 2})
    t.join(timeout=30)
    assert done == [200]
    rows = watcher.reads
    r2 = client.get(f"/jobs/{job_id}", params={"wait": 10}, headers={"If-None-Match": old})
    assert r2.status_code == 200 and r2.json()["progress"]["complete"] == 2 and watcher.reads == rows
    assert r2.json() == client.get(f"/jobs/{job_id}").json()
    # deleted while a long-poll waits: 404
    t = threading.Thread(target=lambda: done.append(client.get(
        f"/jobs/{job_id}", params={"wait": 20}, headers={"If-None-Match": r2.headers["etag"]}).status_code))
    t.start()
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(sa.delete(Job).where(Job.id == job_id))
    t.join(timeout=30)
    assert done == [200, 404]


def test_close_changes_arrive_as_the_latest_in_paced_batches(client, spec_dict, settings):
    """Changes within ``min_gap`` of the last wake-up are held and then given out as one (the latest), to
    40 waiters in batches of 5 (each batch in a later turn of the event loop), from one read per poll."""
    from app.services.watch import JobWatcher

    job_id = client.post("/jobs", json=spec_dict()).json()["id"]
    etag0 = client.get(f"/jobs/{job_id}").headers["etag"]
    url = settings.database_url

    async def main() -> None:
        watcher = JobWatcher(get_engine(url), interval=0.02, min_gap=3600, batch=5, pace=0.001)
        turn = [0]

        async def turns() -> None:
            while True:
                turn[0] += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(turns())
        # the first read is given out at once
        assert (await watcher.wait_changed(job_id, '"other"', TIMEOUT)).etag == etag0
        got: list[tuple[int, int]] = []

        async def waiter() -> None:
            snap = await watcher.wait_changed(job_id, etag0, TIMEOUT)
            got.append((snap.detail["version"], turn[0]))

        waiters = [asyncio.create_task(waiter()) for _ in range(40)]
        for v in (1, 2, 3):
            await asyncio.to_thread(_bump, url, job_id, progress={"complete": v, "counted": v})
            polls = watcher.polls
            while watcher.polls < polls + 2:  # the change is read...
                await asyncio.sleep(0.01)
        assert watcher.current(job_id).etag == etag0 and not got  # ...but held: within min_gap of the last
        assert watcher.reads == 1 + 3  # one row read per change seen, not per waiter
        watcher.min_gap = 0
        await asyncio.wait_for(asyncio.gather(*waiters), TIMEOUT)
        assert {v for v, _ in got} == {3}  # all 40 got the latest, none of the intermediate ones
        assert len({t for _, t in got}) >= 40 // 5  # woken a batch per turn, not all in one
        ticker.cancel()
        watcher.stop()

    asyncio.run(main())

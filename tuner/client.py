"""A Python client for the tuneserve REST API (sync, httpx). It imports no server code, only speaks JSON.

    from tuner.client import Client
    with Client("http://127.0.0.1:8000") as c:
        job = c.submit("examples/digits-mlp.json")
        job = c.wait(job["id"])              # long-polls GET /jobs/{id}?wait=S, no busy polling
        c.download_model(job["id"], "best.pt")

Every error the server answers (and a server that cannot be reached) is raised as :class:`TuneserveError`
with the HTTP status and the server's field-level messages (``"budget.n_trials: must be at least 1"``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx

PREDICT_CHUNK_BYTES = 192 * 1024  # JSON rows per predict request: under the service's default 256 KiB limit

__all__ = ["DEFAULT_URL", "FINISHED", "Client", "TuneserveError"]

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = ("succeeded", "failed", "cancelled")
LONG_POLL_S = 30.0  # one long-poll; the server allows up to 60


class TuneserveError(Exception):
    """An error answer of the server: ``status_code`` (None when it could not be reached) and ``errors``,
    the server's messages (one per field for a 422)."""

    def __init__(self, message: str, *, status_code: int | None = None, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.errors = list(errors) or [message]


class Client:
    """``Client(url, api_key=None)``; ``api_key`` is sent as ``Authorization: Bearer <key>``."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        # X-Requested-With: the server refuses a POST that a plain cross-site form could send (see README
        # "Security"); a script's requests say who they are.
        headers = {"X-Requested-With": "tuneserve-client"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ jobs
    def submit(self, spec: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
        """Queue a job; ``spec`` is the spec itself or a path to a JSON/YAML file. Returns the job."""
        body = dict(spec) if isinstance(spec, Mapping) else _read_spec(Path(spec))
        return self._json("POST", "/jobs", json=body)

    def get(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{job_id}")

    def jobs(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Jobs, newest first (one page)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status is not None:
            params["status"] = status
        return list(self._json("GET", "/jobs", params=params)["items"])

    def watch(self, job_id: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """The job now and after each change, until it is finished (long-poll: one request per change or
        per 30 s). Raises :class:`TimeoutError` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        r = self._request("GET", f"/jobs/{job_id}")
        job, etag = r.json(), r.headers.get("etag")
        yield job
        while job["status"] not in FINISHED:
            wait = LONG_POLL_S
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            if etag is None:  # a server without ETags cannot long-poll: plain polling, once a second
                time.sleep(min(1.0, wait))
            headers = {"If-None-Match": etag} if etag else {}
            r = self._request("GET", f"/jobs/{job_id}", params={"wait": round(wait, 3)}, headers=headers,
                              timeout=wait + self._timeout)
            if r.status_code == 304:
                continue
            job, etag = r.json(), r.headers.get("etag")
            yield job

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job is finished (succeeded, failed or cancelled) and return it."""
        job: dict[str, Any] = {}
        for job in self.watch(job_id, timeout=timeout):
            pass
        return job

    def trials(self, job_id: str, *, page_size: int = 500) -> list[dict[str, Any]]:
        """Every trial of the job in number order (all pages)."""
        out: list[dict[str, Any]] = []
        while True:
            params = {"limit": page_size, "offset": len(out)}
            page = self._json("GET", f"/jobs/{job_id}/trials", params=params)
            out.extend(page["items"])
            if not page["items"] or len(out) >= page["total"]:
                return out

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/jobs/{job_id}/cancel")

    # ---------------------------------------------------------------------------------- results
    def result(self, job_id: str) -> dict[str, Any]:
        """The result bundle (``GET /jobs/{id}/result``): best params, scores, test metrics, seeds..."""
        return self._json("GET", f"/jobs/{job_id}/result")

    def download_model(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        """Save the best model's checkpoint (``GET /jobs/{id}/model``) to ``path``; loadable with
        ``tuner.load_model``."""
        target = Path(path)
        with self._http.stream("GET", f"/jobs/{job_id}/model") as r:
            if r.status_code >= 400:
                r.read()
                raise _error(r)
            tmp = target.with_name(target.name + ".part")
            with tmp.open("wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
        tmp.replace(target)
        return target

    def predict(
        self, job_id: str, rows: Sequence[Sequence[Any]] | Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """Predictions of the best model for ``rows`` (lists of feature values, or dicts by column name).

        The service takes JSON rows up to its JSON limit (``TUNER_MAX_JSON_KB``, 256 KiB by default), so
        more rows go in several requests of at most ``PREDICT_CHUNK_BYTES`` each, and their predictions
        come back as one answer, in order."""
        items = [dict(r) if isinstance(r, Mapping) else list(r) for r in rows]
        chunks: list[list[Any]] = [[]]
        size = 0
        for item in items:
            n = len(json.dumps(item, separators=(",", ":"))) + 1
            if chunks[-1] and size + n > PREDICT_CHUNK_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += n
        answers = [self._json("POST", f"/jobs/{job_id}/predict", json={"rows": chunk}) for chunk in chunks]
        if len(answers) == 1:
            return answers[0]
        merged = dict(answers[0])
        merged["predictions"] = [p for a in answers for p in a["predictions"]]
        merged["n_rows"] = sum(int(a.get("n_rows", len(a["predictions"]))) for a in answers)
        return merged

    # --------------------------------------------------------------------------------- datasets
    def upload(self, path: str | os.PathLike[str], *, target: str | None = None, task: str | None = None,
               allow_nan: bool = False) -> dict[str, Any]:
        """Upload a CSV, Parquet or NPZ file; returns the data set (its ``id`` goes in a spec)."""
        p = Path(path)
        form: dict[str, Any] = {"allow_nan": str(allow_nan).lower()}
        if target is not None:
            form["target"] = target
        if task is not None:
            form["task"] = task
        with p.open("rb") as f:
            return self._json("POST", "/datasets", files={"file": (p.name, f)}, data=form)

    # ----------------------------------------------------------------------------------- plumbing
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise TuneserveError(f"{self.url}: {exc}") from exc
        if r.status_code >= 400:
            raise _error(r)
        return r

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body = self._request(method, path, **kwargs).json()
        assert isinstance(body, dict)
        return body


def _error(r: httpx.Response) -> TuneserveError:
    """``{"detail": "..."}`` or ``{"detail": [{"msg": ...}, ...]}`` -> one exception with every message."""
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        detail = r.text.strip() or r.reason_phrase
    if isinstance(detail, list):
        errors = [str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail]
    else:
        errors = [str(detail or r.reason_phrase)]
    message = f"HTTP {r.status_code}: " + "; ".join(errors)
    return TuneserveError(message, status_code=r.status_code, errors=errors)


def _read_spec(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise TuneserveError(f"{path}: a spec is a JSON/YAML object")
    return data

import sqlalchemy as sa

from app.db import get_engine
from app.migrate import VERSION_TABLE


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_at_head(client):
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_readyz_not_at_head(client, settings):
    engine = get_engine(settings.database_url)
    with engine.begin() as conn:
        (rev,) = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).one()
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'old'"))
    try:
        r = client.get("/readyz")
        assert r.status_code == 503 and "tuner migrate" in r.json()["detail"]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = :r"), {"r": rev})


def test_readyz_database_unreachable(tmp_path):
    from fastapi.testclient import TestClient

    from app.core.config import Settings
    from app.main import create_app

    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    with TestClient(create_app(Settings(database_url=url))) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and "unreachable" in r.json()["detail"]


def test_unknown_route_is_json_404(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}

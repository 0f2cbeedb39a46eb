"""The page's files are served by the app itself (no CDN); the browser test is tests/app/test_web.py."""

import re


def test_page_and_its_scripts_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    srcs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/web/plotly.min.js" in srcs and "/web/app.js" in srcs
    assert not [s for s in srcs if s.startswith(("http:", "https:", "//"))]
    js = client.get("/web/plotly.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()
    app_js = client.get("/web/app.js")
    assert app_js.status_code == 200 and "Authorization" in app_js.text
    assert client.get("/web/style.css").status_code == 200

"""The interactive docs page and the OpenAPI document are served by the app itself, every asset local."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit


class _AssetLinks(HTMLParser):
    """Collects the URLs a page makes the browser load (scripts, style sheets, images, frames)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src", "iframe": "src"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append(value)


def test_docs_page_loads_swagger_ui_from_the_app_itself(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    parser = _AssetLinks()
    parser.feed(html)
    assert len(parser.urls) == 3, parser.urls  # style sheet, standalone preset, bundle
    for url in parser.urls:
        absolute = urljoin("http://127.0.0.1/docs", url)
        assert urlsplit(absolute).netloc == "127.0.0.1", f"{url} is not served by the app"
        asset = client.get(urlsplit(absolute).path)
        assert asset.status_code == 200, url
        assert asset.mimetype in ("text/css", "text/javascript", "application/javascript"), (url, asset.mimetype)
        assert len(asset.get_data()) > 10_000, url  # the real Swagger UI files, not an error page
        asset.close()
    # The page fetches the app's own OpenAPI document and never the online validator.
    assert '"validatorUrl": null' in html
    assert "/openapi.json" in html


def test_docs_openapi_document_lists_the_api(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["info"]["title"] == "Fleet telemetry"
    assert "/v1/telemetry/ingest" in spec["paths"]
    assert "/docs/assets/{filename}" not in spec["paths"]  # the static files are not part of the API


def test_docs_assets_outside_the_bundle_are_404(client):
    assert client.get("/docs/assets/../../api/__init__.py").status_code == 404
    assert client.get("/docs/assets/missing.js").status_code == 404


def test_docs_with_a_trailing_slash_leads_to_the_page(client):
    answer = client.get("/docs/")
    assert answer.status_code == 301
    assert urljoin("http://localhost/docs/", answer.headers["Location"]) == "http://localhost/docs"
    assert client.get("/docs/", follow_redirects=True).status_code == 200

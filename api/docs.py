"""The interactive API docs page (Swagger UI at /docs), with every asset served by the app itself.

flask-smorest renders the page and the OpenAPI document (/openapi.json); its template loads Swagger UI's
script and style sheet from OPENAPI_SWAGGER_UI_URL, which by default would be a CDN. The files come from the
pinned `swagger-ui-bundle` package instead, served here, so the page works with no internet access.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, redirect, request, send_from_directory
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
ASSETS_PATH = DOCS_PATH + "/assets"

#: A plain Flask blueprint, the one blueprint of the app that is not api.blueprint.Blueprint (besides flask-smorest's
#: own "api-docs", which serves the page and the document): it serves static files and a redirect, not API
#: operations. It reads no arguments, bodies or pages (nothing for the hardened parsers to guard), and it must stay
#: out of the OpenAPI document: registered with the Api, its routes would be listed (and fuzzed) as operations.
blp = Blueprint("docs_assets", __name__)


@blp.route(ASSETS_PATH + "/<path:filename>")
def swagger_ui_asset(filename: str) -> Response:
    """One of Swagger UI's static files (404 for anything outside its directory)."""
    return send_from_directory(str(swagger_ui_path), filename, max_age=86400)


@blp.route(DOCS_PATH + "/")
def docs_with_slash() -> Response:
    """/docs/ is where people type it: send them to the page (under the app's mount prefix, if any). The page itself
    is not served here: its asset URLs are relative to /docs."""
    return redirect(request.script_root + DOCS_PATH, code=301)


def configure(app: Flask) -> None:
    """Point flask-smorest's docs page at the local assets; call before creating the Api."""
    app.config.update(
        OPENAPI_SWAGGER_UI_PATH=DOCS_PATH,
        # Relative to the page (served at .../docs), so it also works when the app is mounted under a prefix.
        OPENAPI_SWAGGER_UI_URL="docs/assets/",
        # Swagger UI would otherwise send the document to an online validator for its badge.
        OPENAPI_SWAGGER_UI_CONFIG={"validatorUrl": None},
    )
    app.register_blueprint(blp)

"""flask-smorest's Blueprint, hardened against hostile input, for every blueprint of the API; the one strict JSON
body parser of the API; and the listings' page sizes.

Found by fuzzing (tests/integration/test_fuzz_openapi.py, test_hostile_input.py):
- pagination: flask-smorest only asks `page >= 1`, and `page=92233720368547760` made an OFFSET beyond
  PostgreSQL's bigint: a database error, a 500. A page past MAX_PAGE is now a 422 naming `query.page`;
- JSON bodies read by webargs (`@blp.arguments`): 100,000 nested arrays raised RecursionError, a 500. Bodies
  are now parsed by `loads_json`, as the ingest endpoint's are: malformed JSON, invalid UTF-8, nesting too deep
  for the parser and duplicate object keys are a 400 saying why; a body that is not JSON is a 415;
- a chunked body over the size limit was cut at the limit and parsed (a 400 for the truncated JSON): every
  body is read by `read_body`, which answers 413.

Duplicate keys are refused rather than resolved (the standard library keeps the last one, other parsers the
first): `{"meterId": "a", "meterId": "b"}` has no meaning a client and a proxy would both agree on.
"""

from __future__ import annotations

import json
from typing import Any

import flask_smorest
import marshmallow as ma
from flask import Request, current_app, request
from flask_smorest import abort
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import RequestEntityTooLarge

#: Listing page sizes (`@blp.paginate()`): the default, and the most one request may ask for.
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: Highest page number a listing accepts: far beyond any listing (a billion pages), and with the largest page
#: size (MAX_PAGE_SIZE) its OFFSET still fits PostgreSQL's bigint.
MAX_PAGE = 1_000_000_000


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # rare: only then find which key it is
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return obj


def read_body(req: Request, *, cache: bool = True) -> bytes:
    """The request body; 413 when it is larger than MAX_CONTENT_LENGTH (FLEET_MAX_BODY_BYTES).

    Werkzeug refuses a too large Content-Length up front, but a chunked body (no Content-Length) is only cut
    off at the limit: `get_data()` returns its first MAX_CONTENT_LENGTH bytes without an error. Whether more
    followed is then read off the raw stream (one byte)."""
    raw = req.get_data(cache=cache)
    limit = req.max_content_length
    if limit is not None and req.content_length is None and len(raw) >= limit and req.input_stream.read(1):
        raise RequestEntityTooLarge()
    return raw


def loads_json(raw: bytes) -> Any:
    """A request body as JSON; ValueError saying what is wrong (malformed, not UTF-8, too deep, duplicate keys).

    NaN, Infinity and numbers too large for a float are parsed (as nan, inf): the schemas refuse them with an
    error naming the field, which tells the client more than "malformed JSON"."""
    try:
        # JSON is UTF-8 (RFC 8259; a BOM is skipped): json.loads(bytes) would also take UTF-16/32 and encoded
        # surrogates ("surrogatepass").
        return json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{type(exc).__name__}: {str(exc)[:200]}") from None


class _StrictJsonParser(FlaskParser):
    """webargs' parser, with JSON bodies read by `loads_json`: 400 naming the problem, 415 for a body that is
    not declared as JSON."""

    def load_json(self, req: Any, schema: ma.Schema) -> Any:
        raw = read_body(req)
        if not raw:
            return core.missing  # the schema then names every required field
        if not is_json_request(req):
            abort(415, message="Content-Type must be application/json")
        try:
            return loads_json(raw)
        except ValueError as exc:
            abort(400, message=f"Malformed JSON: {exc}", messages={"json": [f"Invalid JSON body: {exc}"]})


class _BoundedPageParser(FlaskParser):
    """Parses page/page_size as flask-smorest does, then refuses a page number past MAX_PAGE."""

    def parse(self, argmap: Any, req: Any = None, **kwargs: Any) -> Any:
        params = super().parse(argmap, req, **kwargs)
        if params.page > MAX_PAGE:
            error = ma.ValidationError({"query": {"page": [f"Must be less than or equal to {MAX_PAGE}."]}})
            self.handle_error(error, req, argmap, error_status_code=None, error_headers=None)
        return params


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint with the strict JSON body parser, bounded page numbers, the API's page sizes, and
    query strings held to what each operation declares (listings, status, analytics, alerts, mappings).

    Unknown query parameters are a 400 naming them (`strict_query=False` lifts it for a blueprint): webargs and
    flask-smorest drop them silently, so `/v1/analytics/fleet?belowTreshold=true` (a typo) answered with the
    unfiltered fleet, which a dashboard would show as if it were filtered. An operation's parameters are its
    `@blp.arguments(..., location="query")` schemas' fields plus, for `@blp.paginate()`, page and page_size."""

    ARGUMENTS_PARSER = _StrictJsonParser()
    PAGINATION_ARGUMENTS_PARSER = _BoundedPageParser()
    #: What `@blp.paginate()` uses when a listing names no sizes of its own (flask-smorest's own class attribute).
    DEFAULT_PAGINATION_PARAMETERS = {"page": 1, "page_size": PAGE_SIZE, "max_page_size": MAX_PAGE_SIZE}  # noqa: RUF012

    def __init__(self, *args: Any, strict_query: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if strict_query:
            self.before_request(_refuse_unknown_query_parameters)


_known_query_parameters: dict[tuple[str, str], frozenset[str]] = {}


def _declared_query_parameters(method: Any) -> frozenset[str]:
    """The query parameters a view method declares to flask-smorest (their names as sent: data_key)."""
    apidoc = getattr(method, "_apidoc", {})
    declared = [p for p in apidoc.get("arguments", {}).get("parameters", []) if p.get("in") == "query"]
    pagination = apidoc.get("pagination", {}).get("parameters")
    if pagination and pagination.get("in") == "query":
        declared.append(pagination)
    names: set[str] = set()
    for parameter in declared:
        schema = parameter["schema"]
        schema = schema() if isinstance(schema, type) else schema
        names.update(field.data_key or name for name, field in schema.fields.items() if not field.dump_only)
    return frozenset(names)


def _refuse_unknown_query_parameters() -> None:
    if not request.args or request.endpoint is None:
        return
    key = (request.endpoint, request.method)
    known = _known_query_parameters.get(key)
    if known is None:
        view_class = getattr(current_app.view_functions[request.endpoint], "view_class", None)
        method = getattr(view_class, "get" if request.method == "HEAD" else request.method.lower(), None)
        if method is None:  # OPTIONS, or a method the view lacks: Flask answers (the allowed methods, a 405)
            return
        known = _known_query_parameters[key] = _declared_query_parameters(method)
    unknown = sorted(set(request.args) - known)
    if unknown:
        names = ", ".join(repr(name[:64]) for name in unknown[:10])
        allowed = ", ".join(sorted(known)) or "none"
        abort(
            400,
            message=f"Unknown query parameter(s) {names}; this operation takes: {allowed}",
            errors={"query": {name[:64]: ["Unknown parameter."] for name in unknown[:10]}},
        )

"""The Flask application of the Docker plugin: routing, body parsing, and the error contract.

libnetwork POSTs JSON to /<Interface>.<Method> and reads `Err` from the answer. Every failure
-- bad JSON, a missing field, a kernel error, a bug -- is answered with JSON {"Err": "..."}
(HTTP 500; 404 for unknown paths, 405 for other methods), never an HTML page or a traceback,
and never longer than ERR_LIMIT characters (each value a message quotes is bounded already, see
`errors.shown`; this is the last guard for the whole text). Every field of a request is checked
against libnetwork's API (requests.py) before its handler runs.
Docker sends Content-Type application/vnd.docker.plugins.v1.x+json: bodies are parsed whatever
the header says.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from typing import Any, Callable, Mapping

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from cni_bridge.docker import ipam, network, requests
from cni_bridge.docker.body import Body
from cni_bridge.docker.context import Driver, Settings
from cni_bridge.errors import PluginError, shown

log = logging.getLogger("cni_bridge.docker")

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
IMPLEMENTS = ["NetworkDriver", "IpamDriver"]
ERR_LIMIT = 2000
Handler = Callable[[Driver, Body], Mapping[str, Any]]


def activate(ctx: Driver, body: Body) -> dict[str, Any]:
    return {"Implements": IMPLEMENTS}


HANDLERS: dict[str, Handler] = {"Plugin.Activate": activate, **network.HANDLERS, **ipam.HANDLERS}


def _reply(payload: Mapping[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(payload) + "\n", status=status, mimetype=CONTENT_TYPE)


class MalformedRequest(PluginError):
    def __init__(self, method: str, why: str) -> None:
        super().__init__(6, f"{method}: malformed request body: {why}")


def _parse(method: str, raw: bytes) -> Mapping[str, Any]:
    """{} for an empty body or JSON null (Docker sends those for argument-less calls)."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(method, f"not JSON ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MalformedRequest(method, f"expected a JSON object, got {type(data).__name__}")
    return data


def _bounded(message: str) -> str:
    return shown(message, ERR_LIMIT, quote=False)


def _view(ctx: Driver, method: str, handler: Handler) -> Callable[[], Response]:
    def view() -> Response:
        started = time.monotonic()
        status, outcome = 200, "ok"
        try:
            body = requests.checked(Body(method, _parse(method, request.get_data(cache=False))))
            payload = dict(handler(ctx, body))
        except PluginError as exc:
            status, payload = 500, {"Err": _bounded(str(exc))}
            outcome = f"error: {payload['Err']}"
        except Exception as exc:  # a bug: still an Err libnetwork can show; the traceback goes to the log
            status, outcome = 500, "internal error\n" + traceback.format_exc()
            payload = {"Err": _bounded(f"{method}: internal error in the pybridge driver: "
                                       f"{exc.__class__.__name__}: {exc}")}
        log.info("%s %.1fms %s", method, (time.monotonic() - started) * 1000, outcome)
        return _reply(payload, status)
    view.__name__ = method
    return view


def create_app(settings: Settings | None = None) -> Flask:
    """One app per process; everything persistent lives in the state store, so any number of
    workers (processes or threads) can serve requests side by side."""
    ctx = Driver(settings or Settings())
    ctx.state.ensure()
    app = Flask("cni_bridge.docker")
    app.config["PYBRIDGE_DRIVER"] = ctx
    for method, handler in HANDLERS.items():
        app.add_url_rule(f"/{method}", endpoint=method, view_func=_view(ctx, method, handler),
                         methods=["POST"])

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:  # 404 unknown method, 405 GET, ...
        what = "unknown plugin method" if exc.code == 404 else exc.name
        return _reply({"Err": _bounded(f"{what}: {request.method} {request.path}")}, exc.code or 500)

    @app.errorhandler(Exception)
    def any_error(exc: Exception) -> Response:  # outside a view (should not happen): never HTML
        log.error("unhandled error on %s\n%s", request.path, traceback.format_exc())
        return _reply({"Err": _bounded(f"internal error in the pybridge driver: {exc.__class__.__name__}: {exc}")}, 500)

    return app

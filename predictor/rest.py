"""REST inference on KServe's FastAPI app: the v2 infer route of our models, answered ahead of
FastAPI, and what every inference request gets on this port.

- Before anything else, auth.py's gate: bearer tokens when authentication is on, KServe's repository
  routes absent unless enabled, liveness 503 once the model is unloaded.
- POST /v2/models/<our model>/infer (JSON and binary tensors) is answered before the app's middleware
  stack: KServe's route would build a pydantic object per number. Every other route (health,
  metadata, v1 `:predict`) stays KServe's.
- A v1 or v2 inference body without a JSON Content-Type (curl's default is form-encoded) is read as
  JSON unless the binary-tensor header says otherwise; KServe 0.21 would treat it as binary and fail.
- Every POST body is limited (the model's --max_body_bytes): a larger Content-Length is a 413 before
  a byte is read, and a body is read only until it passes the limit (asgi.py). Versioned routes
  (/v2/models/<name>/versions/<v>/...) are the unversioned ones when <v> is the model's version, else
  404.
- Client mistakes are 400 `{"error": ...}` (FastAPI's own validation errors would be 422), and every
  inference request is counted and timed here, rejected ones with their reason; `/metrics` serves
  the sum over all worker processes.

`RESTServer` installs this in every process that serves REST (KServe builds the app in each worker).
"""
from __future__ import annotations

import gc
import logging
import re
from contextvars import ContextVar
from typing import Optional

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from kserve import model_server
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.model_repository import ModelRepository
from kserve.protocol.rest import server as kserve_rest

from . import auth, codec, connections, metrics, offload, timeseries
from .admission import OVERLOAD, RETRY_AFTER, Admission
from .asgi import BINARY_HEADER, CLOSE, BodyTooLarge, read_body, reply
from .contract import REASON_OF_HTTP_STATUS, internal_error, reason_of
from .model import PerfPredictor, body_limit, served, sole_model

logger = logging.getLogger("perf_predictor")
JSON_TYPE = b"application/json"
V2_INFER = re.compile(r"^/v2/models/([^/]+)/infer$")
VERSIONED = re.compile(r"^/v2/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)(?P<rest>/[^/]*)?$")
MODEL_PATH = re.compile(r"^/v[12]/models/([^/:]+)")
INFERENCE_PATH = re.compile(r"^/v2/models/(?P<v2>[^/]+)(?:/versions/[^/]+)?/infer$|^/v1/models/(?P<v1>[^/:]+):predict$")
# readiness, which turns false on SIGTERM while the server drains (liveness stays true)
READINESS_PATH = re.compile(r"^/v2/health/ready$|^/v2/models/[^/]+(?:/versions/[^/]+)?/ready$|^/v1/models/[^/:]+$")

# The request being answered by KServe's routes, for the 4xx reason its exception handler finds.
request_state: ContextVar[Optional[dict]] = ContextVar("perf_predictor_request", default=None)


class RESTServer(kserve_rest.RESTServer):
    """KServe's REST server with this module's additions, for our models in KServe's registry."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        connections.install(self.config, connections.limits or connections.Limits())

    def create_application(self) -> None:
        super().create_application()
        registry = self.dataplane.model_registry
        install(model_server.app, registry)
        for model in (served(registry, name) for name in list(registry.get_models())):
            if model is not None:  # this process serves it: its bound is on this process's metrics
                metrics.record_bound(model.name, model.admission.bound)
        # Everything built until now (modules, the model, the app) lives as long as the process: out of
        # the cyclic collector, whose full collections over it stopped the event loop for a tenth of a
        # second each under load. Called in every process that serves (worker processes too).
        gc.collect()
        gc.freeze()


# --- the v2 infer route of our models
async def reply_error(send, state: dict, status: int, message: str, reason: Optional[str] = None,
                      extra_headers: tuple = ()) -> None:
    state.update(status=status, reason=reason)
    if status < 500:
        logger.info("rejected request: %s", message)
    await reply(send, status, orjson.dumps({"error": message}), extra_headers=extra_headers)


async def reply_overloaded(send, state: dict, admission: Admission) -> None:
    """503 with Retry-After: the process holds as many requests as it may (admission.py). Most such
    requests are refused earlier, by the connection (OverloadRefusal); this is for the rest."""
    state.update(status=503, reason=OVERLOAD)
    await reply(send, 503, orjson.dumps({"error": admission.message()}), extra_headers=RETRY_AFTER)


class OverloadRefusal:
    """connections.overload_refusal for one process: the 503 body of a POST to an inference route
    (v2 infer, versioned or not; v1 `:predict`; `/v1/timeseries/forecast` when this process serves
    one model, ours (model.sole_model), as that request names its model in the body) of a ready model of ours whose
    bound is reached, counted as the application counts it; None for every other request, and for
    one the application refuses anyway (authentication, an unknown version), so it answers those."""

    def __init__(self, registry: ModelRepository, gate: auth.Gate):
        self.registry = registry
        self.gate = gate
        self.routes: dict[str, Optional[tuple]] = {}  # path -> what route_of found (it is most of the cost)

    @staticmethod
    def route_of(path: str) -> Optional[tuple]:
        """("rest", model name, version or None) for an inference route, ("timeseries",) for the forecast
        route, None for any other path."""
        if (match := INFERENCE_PATH.match(path)) is not None:
            versioned = VERSIONED.match(path)
            return "rest", match["v2"] or match["v1"], None if versioned is None else versioned["version"]
        return (timeseries.PROTOCOL,) if path.rstrip("/") == timeseries.FORECAST_PATH else None

    def __call__(self, path: str, headers: list) -> Optional[bytes]:
        if (route := self.routes.get(path, False)) is False:
            if len(self.routes) >= 256:  # paths are the client's to choose: the cache stays small
                self.routes.clear()
            route = self.routes[path] = self.route_of(path)
        if route is None:
            return None
        if route[0] == "rest":
            model, protocol = served(self.registry, route[1]), "rest"
            if route[2] is not None and (model is None or route[2] != model.version):
                return None
        else:
            model, protocol = sole_model(self.registry), timeseries.PROTOCOL
        if model is None or not model.ready or not model.admission.full():
            return None
        if self.gate.rest_refusal({"path": path, "headers": headers}) is not None:
            return None
        metrics.record_refusal(model.name, protocol)
        if protocol == timeseries.PROTOCOL:
            return timeseries.overloaded_body(model)
        return orjson.dumps({"error": model.admission.message()})


async def infer_v2(model: PerfPredictor, scope, receive, send) -> None:
    with metrics.tracked(model.name, "rest", "v2_infer") as state:
        if model.admission.full():  # refused before its body is read: it costs next to nothing
            return await reply_overloaded(send, state, model.admission)
        json_length = None
        for key, value in scope["headers"]:
            if key == BINARY_HEADER:
                try:
                    json_length = int(value)
                except ValueError:
                    return await reply_error(send, state, 400, "Inference-Header-Content-Length must be an integer",
                                             "malformed_body")
        need, limit = model.history_length, model.max_body_bytes
        entered = False  # a place is taken once the body has arrived (a large JSON one: as it starts to)
        try:
            spooled = offload.spools(scope, json_length)  # a large JSON body: decoded in the helper process
            body = None if spooled else await read_body(receive, limit, scope)
            if not (entered := model.admission.enter()):
                return await reply_overloaded(send, state, model.admission)
            if spooled:
                history, wanted = await offload.decoder.decode_streamed(receive, limit, scope, need)
            else:
                history, wanted = await offload.decoder.decode_v2_body(body, json_length, need)
            with metrics.predict_seconds(model.name).time():
                forecasts = await model.forecast(history, "rest", inline=True)
            body, reply_json_length = codec.encode_v2_body(wanted, model.name, model.version, model.output_names,
                                                           forecasts)
        except BodyTooLarge as exc:
            return await reply_error(send, state, 413, str(exc), "too_large", CLOSE)
        except InvalidInput as exc:
            return await reply_error(send, state, 400, str(exc), reason_of(exc))
        except Exception as exc:  # a bug of ours: the client gets a 500 in the protocol's shape
            logger.exception("inference failed")
            return await reply_error(send, state, 500, internal_error(exc))
        finally:
            if entered:
                model.admission.leave()
        state["status"] = 200
        await reply(send, 200, body, reply_json_length)


def answer_v2_infer_first(app, registry: ModelRepository) -> None:
    """KServe's uvicorn server takes the module-level FastAPI object by import string, in every
    worker process, so the object itself changes: its class becomes a subclass that looks first."""
    base = type(app)
    gate = auth.Gate(auth.current(), registry)  # tokens, the repository API, liveness (auth.py)
    connections.overload_refusal = OverloadRefusal(registry, gate)  # this process's connections refuse first

    class V2InferFirst(base):
        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and (refusal := gate.rest_refusal(scope)) is not None:
                return await reply(send, refusal[0], refusal[1], extra_headers=refusal[2])
            if connections.draining and scope["type"] == "http" and READINESS_PATH.match(scope["path"]):
                return await reply(send, 503, orjson.dumps({"error": "not ready: the server is shutting down"}))
            if scope["type"] == "http" and (versioned := VERSIONED.match(scope["path"])):
                scope = unversioned(registry, scope, versioned)
                if scope is None:
                    return await reply(send, 404, orjson.dumps({"error": unknown_version(versioned)}))
            if scope["type"] == "http" and scope["method"] == "POST" and (match := V2_INFER.match(scope["path"])):
                model = served(registry, match.group(1))
                if model is not None and model.ready:
                    return await infer_v2(model, scope, receive, send)
            if timeseries.handles(scope):  # KServe's time-series API, registered by KServe for its own models only
                return await timeseries.serve(registry, scope, receive, send)
            await base.__call__(self, scope, receive, send)

    V2InferFirst.__name__ = f"V2InferFirst{base.__name__}"
    app.__class__ = V2InferFirst


def unknown_version(versioned: re.Match) -> str:
    return f"Model with name {versioned['name']} and version {versioned['version']} does not exist."


def unversioned(registry: ModelRepository, scope, versioned: re.Match) -> Optional[dict]:
    """The scope of the unversioned route when the path names our model at its version, else None.
    KServe 0.21 registers the versioned routes but answers 501 with a traceback for every request."""
    model = served(registry, versioned["name"])
    if model is None or not model.version or versioned["version"] != model.version:
        return None
    path = f"/v2/models/{versioned['name']}{versioned['rest'] or ''}"
    return dict(scope, path=path, raw_path=path.encode())


# --- every other request, through KServe's routes
class BodyLimitMiddleware:
    """A POST body larger than the limit is a 413 before KServe reads it: refused on its Content-Length,
    else read here up to the limit (never more) and handed on whole."""

    def __init__(self, app, registry: ModelRepository):
        self.app = app
        self.registry = registry

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        match = MODEL_PATH.match(scope["path"])
        try:
            body = await read_body(receive, body_limit(self.registry, match and match.group(1)), scope)
        except BodyTooLarge as exc:
            note_rejection("too_large")
            logger.info("rejected request: %s", exc)
            return await reply(send, 413, orjson.dumps({"error": str(exc)}), extra_headers=CLOSE)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # the client's disconnect
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class JsonContentTypeMiddleware:
    """Inference POSTs without the binary-tensor header are read as JSON."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and INFERENCE_PATH.match(scope["path"]):
            headers = list(scope["headers"])
            if all(k != BINARY_HEADER for k, _ in headers):
                headers = [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", JSON_TYPE)]
                scope = dict(scope, headers=headers)
        await self.app(scope, receive, send)


class MetricsMiddleware:
    """Serves /metrics; counts and times every inference request that reaches KServe's routes."""

    def __init__(self, app, registry: ModelRepository):
        self.app = app
        self.registry = registry

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/metrics" and scope["method"] == "GET":
            body, content_type = metrics.exposition()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", content_type.encode())]})
            return await send({"type": "http.response.body", "body": body})
        match = INFERENCE_PATH.match(scope["path"]) if scope["method"] == "POST" else None
        if not match:
            return await self.app(scope, receive, send)
        name = match.group("v2") or match.group("v1")
        ours = served(self.registry, name)
        model = name if ours is not None else "unknown"  # no label per made-up path
        endpoint = "v2_infer" if match.group("v2") else "v1_predict"
        with metrics.tracked(model, "rest", endpoint) as state:
            admission = ours.admission if ours is not None else None
            if admission is not None and not admission.enter():  # held from here, its body read by KServe
                return await reply_overloaded(send, state, admission)
            token = request_state.set(state)

            async def capture_status(message):
                if message["type"] == "http.response.start":
                    state["status"] = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, capture_status)
            finally:
                request_state.reset(token)
                if admission is not None:
                    admission.leave()


def note_rejection(reason: Optional[str]) -> None:
    state = request_state.get()
    if state is not None:
        state["reason"] = reason


async def invalid_input_handler(_request, exc: InvalidInput) -> JSONResponse:
    """KServe's reply to a client mistake (400 {"error": ...}), with its reason counted and one INFO line."""
    note_rejection(reason_of(exc))
    logger.info("rejected request: %s", exc)
    return JSONResponse(status_code=400, content={"error": str(exc)})


def _describe(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return "the body is not valid JSON"
    # The v2 body is typed "InferenceRequest or raw bytes": the bytes branch's complaint only confuses.
    errors = [e for e in errors if tuple(e.get("loc", ()))[:2] != ("body", "bytes")] or errors
    problems = []
    for err in errors[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        problems.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "malformed request body: " + "; ".join(problems)


async def unknown_model_handler(_request, exc: Exception) -> JSONResponse:
    """KServe's 404 / 503 for a model it does not have or that is not ready, without the traceback its
    own handlers log for each such request."""
    status = 404 if isinstance(exc, ModelNotFound) else 503
    note_rejection(REASON_OF_HTTP_STATUS.get(status))
    logger.info("rejected request: %s", exc)
    return JSONResponse(status_code=status, content={"error": str(exc)})


async def http_error_handler(_request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route, wrong method, an unreadable body) in the protocol's
    shape rather than FastAPI's {"detail": ...}."""
    if exc.status_code < 500:
        note_rejection(REASON_OF_HTTP_STATUS.get(exc.status_code))
    return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)}, headers=exc.headers)


async def validation_error_handler(_request, exc: RequestValidationError) -> JSONResponse:
    note_rejection("malformed_body")
    return JSONResponse(status_code=400, content={"error": _describe(exc)})


def install(app, registry: ModelRepository) -> None:
    """Once per process and app. Starlette puts the last added middleware outermost: metrics see
    everything, then content type, then the body limit; our models' v2 infer requests are answered
    before all of it."""
    if getattr(app, "perf_predictor_installed", False):
        return
    answer_v2_infer_first(app, registry)
    app.add_middleware(BodyLimitMiddleware, registry=registry)
    app.add_middleware(JsonContentTypeMiddleware)
    app.add_middleware(MetricsMiddleware, registry=registry)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(ModelNotFound, unknown_model_handler)
    app.add_exception_handler(ModelNotReady, unknown_model_handler)
    app.add_exception_handler(InvalidInput, invalid_input_handler)
    app.perf_predictor_installed = True

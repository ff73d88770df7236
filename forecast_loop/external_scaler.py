"""KEDA's external scaler (gRPC `externalscaler.ExternalScaler`), served from the loop's recommendations.

The messages are built here from the interface's field numbers (KEDA's
pkg/scalers/externalscaler/externalscaler.proto) into a private descriptor pool, and served with grpcio
generic handlers: no generated code, and no clash with a client that loads KEDA's own .proto.

A trigger names its target in `scalerMetadata.target`; every other key, except KEDA's own
(`scalerAddress`, `enableTLS`, `unsafeSsl`, which KEDA passes along: pkg/scalers/external_scaler.go
`parseExternalScalerMetadata` copies the whole trigger metadata), is a label matcher (`service: api`)
that must leave exactly one of the target's series.

- GetMetricSpec: one metric, `targetSizeFloat` = `capacity.per_replica`. It needs no forecast, so KEDA
  can build its HPA while the loop is still warming up.
- GetMetrics: `metricValueFloat` = `perf_predictor_desired_replicas` * per_replica (the recommendation's
  load rounded up to whole replicas, `Recommendation.trigger_load`), so the HPA's AverageValue rule,
  ceil(value / target), arrives at the recommendation, and its tolerance compares desired / current
  replicas rather than a fraction of one replica (KEDA passes values with 3 decimals,
  `quantityFromFloat64` in pkg/scalers/scaler.go, and reads `metricValue` instead when the float is 0).
- IsActive: desired > 0 or load > 0. StreamIsActive: the same, sent at once and then whenever it
  changes, checked after every iteration of the loop.

Errors: NOT_FOUND for an unknown target or no series matching the labels; INVALID_ARGUMENT for missing
or bad metadata, a target without `capacity`, or labels matching several series; UNAVAILABLE when the
target has no fresh forecast (none yet, or the last is older than 3 intervals): no recommendation is made
from a stale forecast. What KEDA and the HPA do then is in docs/autoscaling.md.
"""
from __future__ import annotations

import re
from concurrent import futures
from typing import Callable, Optional

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "externalscaler.ExternalScaler"
KEDA_KEYS = frozenset({"scalerAddress", "enableTLS", "unsafeSsl"})  # trigger metadata KEDA itself reads
STREAM_RECHECK = 5.0  # seconds: a stream also rechecks (and notices a cancelled call) this often

_F = descriptor_pb2.FieldDescriptorProto
# message -> [(field, number, type, label, message type)], as in KEDA's externalscaler.proto
_MESSAGES = {
    "ScaledObjectRef": [("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                        ("namespace", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                        ("scalerMetadata", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED,
                         ".externalscaler.ScaledObjectRef.ScalerMetadataEntry")],
    "IsActiveResponse": [("result", 1, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None)],
    "GetMetricSpecResponse": [("metricSpecs", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".externalscaler.MetricSpec")],
    "MetricSpec": [("metricName", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                   ("targetSize", 2, _F.TYPE_INT64, _F.LABEL_OPTIONAL, None),
                   ("targetSizeFloat", 3, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, None)],
    "GetMetricsRequest": [("scaledObjectRef", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".externalscaler.ScaledObjectRef"),
                          ("metricName", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None)],
    "GetMetricsResponse": [("metricValues", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".externalscaler.MetricValue")],
    "MetricValue": [("metricName", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                    ("metricValue", 2, _F.TYPE_INT64, _F.LABEL_OPTIONAL, None),
                    ("metricValueFloat", 3, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, None)],
}


def _build_messages() -> dict:
    file = descriptor_pb2.FileDescriptorProto(name="perf_predictor/keda_externalscaler.proto",
                                              package="externalscaler", syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for field, number, kind, label, type_name in fields:
            message.field.add(name=field, number=number, type=kind, label=label, json_name=field,
                              **({"type_name": type_name} if type_name else {}))
    entry = file.message_type[0].nested_type.add(name="ScalerMetadataEntry")
    entry.options.map_entry = True
    for field, number in (("key", 1), ("value", 2)):
        entry.field.add(name=field, number=number, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name=field)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"externalscaler.{name}"))
            for name in _MESSAGES}


MESSAGES = _build_messages()


class ScalerError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def metric_name(target: str) -> str:
    """The external metric's name: KEDA adds its `sN-` prefix; an HPA metric name is a URL path segment."""
    return "perf-predictor-" + re.sub(r"[^a-z0-9-]+", "-", target.lower())


class Scaler:
    """Answers from the loop's published views; the loop object only needs `states`, `metrics.views`,
    `config.interval` and `iterated` (a Condition notified after every iteration)."""

    def __init__(self, loop, clock: Callable[[], float]):
        self.loop = loop
        self.clock = clock

    def _target(self, ref) -> tuple:
        metadata = dict(ref.scalerMetadata)
        name = metadata.get("target", "").strip()
        if not name:
            raise ScalerError(grpc.StatusCode.INVALID_ARGUMENT, "scalerMetadata.target is required")
        state = self.loop.states.get(name)
        if state is None:
            raise ScalerError(grpc.StatusCode.NOT_FOUND, f"no target {name!r} (targets: "
                              f"{', '.join(sorted(self.loop.states))})")
        if state.target.capacity is None:
            raise ScalerError(grpc.StatusCode.INVALID_ARGUMENT, f"target {name!r} has no capacity: set "
                              f"targets[].capacity in the loop's config to scale on it")
        matchers = {k: v for k, v in metadata.items() if k != "target" and k not in KEDA_KEYS}
        return state, matchers

    def recommendation(self, ref) -> tuple[float, int]:
        """(trigger_load, desired) of the one series `ref` selects; raises ScalerError."""
        state, matchers = self._target(ref)
        name = state.target.name
        view = self.loop.metrics.views[name]
        forecasts = view.forecasts
        limit = 3 * self.loop.config.interval
        if forecasts is None or forecasts.recommendation is None or view.last_success is None \
                or self.clock() - view.last_success > limit:
            since = "no forecast yet" if view.last_success is None else \
                f"last forecast {self.clock() - view.last_success:.0f}s ago, more than 3 intervals"
            raise ScalerError(grpc.StatusCode.UNAVAILABLE, f"target {name!r} has no fresh forecast ({since})")
        known = set().union(*(labels.keys() for labels in forecasts.labels)) - {"target"}
        unknown = sorted(set(matchers) - known)
        if unknown:
            raise ScalerError(grpc.StatusCode.INVALID_ARGUMENT, f"target {name!r} has no label "
                              f"{', '.join(unknown)} (its series' labels: {', '.join(sorted(known)) or 'none'})")
        rows = [i for i, labels in enumerate(forecasts.labels)
                if all(labels.get(k) == v for k, v in matchers.items())]
        if not rows:
            raise ScalerError(grpc.StatusCode.NOT_FOUND, f"no series of target {name!r} has labels {matchers}")
        if len(rows) > 1:
            differ = sorted(k for k in known if len({forecasts.labels[i].get(k) for i in rows}) > 1)
            raise ScalerError(grpc.StatusCode.INVALID_ARGUMENT, f"{len(rows)} series of target {name!r} match "
                              f"{matchers}; select one with scalerMetadata labels ({', '.join(differ)})")
        rec = forecasts.recommendation
        return max(0.0, float(rec.trigger_load[rows[0]])), int(rec.desired[rows[0]])

    def is_active(self, ref) -> bool:
        load, desired = self.recommendation(ref)
        return desired > 0 or load > 0

    # -- the four RPCs -----------------------------------------------------------------------------
    def IsActive(self, ref, context):
        return MESSAGES["IsActiveResponse"](result=self.is_active(ref))

    def StreamIsActive(self, ref, context):
        last: Optional[bool] = None
        seen = -1
        while context.is_active():
            with self.loop.iterated:
                if self.loop.iteration == seen:
                    self.loop.iterated.wait(STREAM_RECHECK)
                seen = self.loop.iteration
            active = self.is_active(ref)
            if active != last:
                last = active
                yield MESSAGES["IsActiveResponse"](result=active)

    def GetMetricSpec(self, ref, context):
        state, _ = self._target(ref)
        per_replica = state.target.capacity.per_replica
        spec = MESSAGES["MetricSpec"](metricName=metric_name(state.target.name), targetSizeFloat=per_replica)
        return MESSAGES["GetMetricSpecResponse"](metricSpecs=[spec])

    def GetMetrics(self, request, context):
        load, _ = self.recommendation(request.scaledObjectRef)
        name = request.metricName or metric_name(request.scaledObjectRef.scalerMetadata["target"].strip())
        value = MESSAGES["MetricValue"](metricName=name, metricValueFloat=load)
        return MESSAGES["GetMetricsResponse"](metricValues=[value])


def _handler(method, streaming: bool, request: str, response: str):
    def call(req, context):
        try:
            result = method(req, context)
            if streaming:
                yield from result
            else:
                yield result
        except ScalerError as exc:
            context.abort(exc.code, str(exc))

    def unary(req, context):
        return next(call(req, context))

    make = grpc.unary_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
    return make(call if streaming else unary, request_deserializer=MESSAGES[request].FromString,
                response_serializer=MESSAGES[response].SerializeToString)


def serve(loop, host: str, port: int, clock: Callable[[], float], workers: int = 16) -> tuple[grpc.Server, int]:
    """Start the scaler on host:port (0: any free port); returns (server, bound port). A StreamIsActive
    call holds one of `workers` threads while it lasts."""
    scaler = Scaler(loop, clock)
    handlers = {
        "IsActive": _handler(scaler.IsActive, False, "ScaledObjectRef", "IsActiveResponse"),
        "StreamIsActive": _handler(scaler.StreamIsActive, True, "ScaledObjectRef", "IsActiveResponse"),
        "GetMetricSpec": _handler(scaler.GetMetricSpec, False, "ScaledObjectRef", "GetMetricSpecResponse"),
        "GetMetrics": _handler(scaler.GetMetrics, False, "GetMetricsRequest", "GetMetricsResponse"),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scaler"))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # grpcio's "Failed to bind to address"
        bound = 0
    if not bound:
        raise OSError(f"cannot listen on {host}:{port} for the KEDA external scaler (in use or not available)")
    server.start()
    return server, bound

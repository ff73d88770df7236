"""gRPC ModelInfer for our models straight from the protobuf message to numpy and back, when KServe's
grpcio server serves the gRPC port (--grpc_front kserve; with Envoy in front, see grpc_bridged.py).

KServe's servicer turns every request into its InferRequest/InferResponse objects; for a forecast
that costs about a millisecond that detour dominates. KServe's GRPCServer builds its servicer from
`kserve.protocol.grpc.server.InferenceServicer`, so `install()` substitutes this subclass there;
KServe's interceptors (error -> status, e.g. INVALID_ARGUMENT for bad input) still wrap it, and every
other RPC is KServe's.
"""
from __future__ import annotations

from kserve.errors import InvalidInput
from kserve.protocol.grpc import server as kserve_grpc_server
from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelInferResponse
from kserve.protocol.grpc.servicer import InferenceServicer

from . import http


class ForecastServicer(InferenceServicer):
    async def ModelInfer(self, request, context):
        model = http.SERVED.get(request.model_name)
        if model is None or not model.ready:
            return await super().ModelInfer(request, context)
        with http.tracked(model.name, "grpc", "v2_infer") as state:
            try:
                reply = ModelInferResponse.FromString(await model.infer_grpc(request, inline=False))
            except InvalidInput as exc:
                state.update(status=400, reason=getattr(exc, "code", None))
                raise
            state["status"] = 200
            return reply


def install() -> None:
    kserve_grpc_server.InferenceServicer = ForecastServicer

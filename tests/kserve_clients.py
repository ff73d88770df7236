"""Child process for test_serving: one v2 inference through kserve's REST client and one through its
gRPC client; prints each client's outputs as JSON. Usage: kserve_clients.py HTTP_URL GRPC_HOST MODEL DATA_JSON"""
import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest


def request(model: str, data: np.ndarray, binary: bool) -> InferRequest:
    tensor = InferInput("history", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data, binary_data=binary)
    return InferRequest(model, [tensor])


async def main(http_url: str, grpc_host: str, model: str, data: np.ndarray) -> dict:
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    rest_response = await rest.infer(http_url, request(model, data, binary=False), model_name=model)
    await rest.close()
    grpc = InferenceGRPCClient(grpc_host, retries=0)
    grpc_response = await grpc.infer(request(model, data, binary=True))
    grpc_contents_response = await grpc.infer(request(model, data, binary=False))  # typed contents, not raw
    await grpc.close()
    return {
        name: {o.name: o.as_numpy().tolist() for o in response.outputs}
        for name, response in (("rest", rest_response), ("grpc", grpc_response),
                               ("grpc_contents", grpc_contents_response))
    }


if __name__ == "__main__":
    http_url, grpc_host, model, raw = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(http_url, grpc_host, model, np.array(json.loads(raw), dtype=np.float32)))))

# helm test for perf-predictor: one real KServe v2 inference request.
# Runs inside the project image with the Python standard library only.
# Env: BASE_URL (http://host[:port]), MODEL_NAME, TIMEOUT_SECONDS, TOKEN_FILE (with auth.enabled: the
# server's tokens; an anonymous call must then get 401 and the first token is sent).
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request

base = os.environ["BASE_URL"].rstrip("/")
model = os.environ["MODEL_NAME"]
deadline = time.time() + float(os.environ.get("TIMEOUT_SECONDS", "120"))
token_file = os.environ.get("TOKEN_FILE")


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def token():
    with open(token_file) as fh:
        return next(t for t in (line.strip() for line in fh) if t and not t.startswith("#"))


def call(path, body=None, anonymous=False):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="GET" if body is None else "POST")
    req.add_header("Content-Type", "application/json")
    if token_file and not anonymous:
        req.add_header("Authorization", "Bearer " + token())
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read().decode() or "null")


last = None
while True:
    try:
        status, _ = call("/v2/models/%s/ready" % model)
        if status == 200:
            break
    except (urllib.error.URLError, OSError, ValueError) as exc:
        last = exc
    if time.time() > deadline:
        fail("model %s not ready at %s within the timeout (last error: %s)" % (model, base, last))
    time.sleep(2)

if token_file:
    try:
        call("/v2/models/%s" % model, anonymous=True)
        fail("authentication is on but an anonymous metadata call was answered")
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            fail("an anonymous metadata call got HTTP %s, not 401" % exc.code)

_, meta = call("/v2/models/%s" % model)
inputs = {t["name"]: t for t in meta.get("inputs", [])}
if "history" not in inputs:
    fail("metadata has no input 'history': %r" % meta)
shape = inputs["history"].get("shape", [])
if len(shape) != 2 or int(shape[1]) <= 0:
    fail("input 'history' shape should be [-1, W], got %r" % shape)
window = int(shape[1])
declared = {t["name"]: t for t in meta.get("outputs", [])}

history = [100.0 + 20.0 * math.sin(2 * math.pi * i / 24.0) for i in range(window)]
request = {
    "id": "helm-test",
    "inputs": [{"name": "history", "shape": [1, window], "datatype": "FP32", "data": history}],
}
try:
    status, reply = call("/v2/models/%s/infer" % model, request)
except urllib.error.HTTPError as exc:
    fail("inference returned HTTP %s: %s" % (exc.code, exc.read()[:500]))
if status != 200:
    fail("inference returned HTTP %s" % status)

outputs = {t["name"]: t for t in reply.get("outputs", [])}
if sorted(outputs) != ["p10", "p50", "p90"]:
    fail("outputs should be p10, p50, p90, got %s" % sorted(outputs))
horizon = None
for name in ("p10", "p50", "p90"):
    out = outputs[name]
    out_shape = [int(x) for x in out.get("shape", [])]
    if len(out_shape) != 2 or out_shape[0] != 1 or out_shape[1] <= 0:
        fail("output %s shape should be [1, H], got %r" % (name, out_shape))
    if horizon is None:
        horizon = out_shape[1]
    if out_shape[1] != horizon:
        fail("outputs disagree on the horizon: %s has %d, expected %d" % (name, out_shape[1], horizon))
    if name in declared:
        want = declared[name].get("shape", [])
        if len(want) == 2 and int(want[1]) > 0 and int(want[1]) != horizon:
            fail("output %s horizon %d differs from metadata %r" % (name, horizon, want))
    if len(out.get("data", [])) != horizon:
        fail("output %s carries %d values, expected %d" % (name, len(out.get("data", [])), horizon))
print("OK: model %s, window %d, horizon %d, outputs p10/p50/p90 of shape [1, %d]" % (model, window, horizon, horizon))

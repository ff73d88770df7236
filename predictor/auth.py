"""Who may call, what stays open, and what "live" means: bearer tokens on REST and gRPC, KServe's
repository API behind a flag, liveness tied to the configured model.

- Tokens come from a file (a mounted Kubernetes Secret): one per line, several while rotating; `#`
  lines and blank lines are skipped. The file is stat()ed per call and re-read when its inode, size or
  mtime changes, so a rotated Secret takes effect without a restart; if it becomes unreadable, the
  tokens read before stay in force and that is logged once.
- A presented token is compared in constant time with every token. A refusal is 401 `{"error": ...}`
  with `WWW-Authenticate: Bearer` over REST, UNAUTHENTICATED over gRPC, and is counted by reason:
  missing, malformed (not one `Bearer <token68>` header) or invalid.
- Health (liveness, readiness, model readiness) and /metrics stay open unless `--auth_open` says
  otherwise; everything else, metadata and /v1/timeseries included, needs a token.
- KServe mounts its repository API (load/unload) on both protocols unconditionally; it is absent
  here (404 / UNIMPLEMENTED) unless `--enable_repository_api`, which needs authentication on.
- Liveness (`/v2/health/live`, `/`) is 503 once the configured model is gone (unloaded), so the
  kubelet restarts the pod instead of keeping a server with nothing to serve.

Worker processes read the same policy from the environment `python -m predictor` writes it to.
"""
from __future__ import annotations

import functools
import hmac
import logging
import os
import re
from dataclasses import dataclass
from typing import Iterable, Optional

import orjson

from . import metrics

logger = logging.getLogger("perf_predictor")

TOKEN_FILE_ENV = "PERF_PREDICTOR_AUTH_TOKEN_FILE"
OPEN_ENV = "PERF_PREDICTOR_AUTH_OPEN"
REPOSITORY_ENV = "PERF_PREDICTOR_REPOSITORY_API"
MODEL_ENV = "PERF_PREDICTOR_MODEL_NAME"
OPENABLE = ("health", "metrics")
UNAUTHENTICATED = 16  # gRPC status (grpc/doc/statuscodes.md)

TOKEN68 = re.compile(rb"[A-Za-z0-9._~+/-]+=*")
BEARER = re.compile(rb"[ \t]*bearer +([A-Za-z0-9._~+/-]+=*)[ \t]*", re.IGNORECASE)  # RFC 6750 2.1
LIVE_PATHS = frozenset({"/v2/health/live", "/"})
HEALTH_PATHS = re.compile(r"^/(?:v2/health/(?:live|ready)|v2/models/[^/]+(?:/versions/[^/]+)?/ready|v1/models/[^/:]+)?$")
METRICS_PATH = "/metrics"
REPOSITORY_PREFIX = "/v2/repository/"
GRPC_SERVICE = "/inference.GRPCInferenceService/"
GRPC_HEALTH = frozenset(GRPC_SERVICE + m for m in ("ServerLive", "ServerReady", "ModelReady"))
GRPC_REPOSITORY = ("RepositoryModelLoad", "RepositoryModelUnload")
MESSAGES = {"missing": "this server needs a bearer token: send Authorization: Bearer <token>",
            "malformed": "the Authorization header must be one 'Bearer <token>' (RFC 6750)",
            "invalid": "the bearer token is not valid"}
CHALLENGE = {"missing": b"Bearer", "malformed": b'Bearer error="invalid_request"',
             "invalid": b'Bearer error="invalid_token"'}


@dataclass(frozen=True)
class Policy:
    token_file: Optional[str] = None  # None: authentication off
    open: frozenset = frozenset(OPENABLE)  # what needs no token when authentication is on
    repository_api: bool = False
    model_name: Optional[str] = None  # liveness fails once this model is not loaded

    def check(self) -> None:
        """ValueError with what to change, for a policy the server must not start with."""
        if self.repository_api and not self.token_file:
            raise ValueError("--enable_repository_api lets a caller unload the model: it needs authentication "
                             "(--auth_token_file)")
        if self.token_file:
            try:
                with open(self.token_file, "rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"--auth_token_file {self.token_file}: {exc.strerror or exc}") from None
        if unknown := set(self.open) - set(OPENABLE):
            raise ValueError(f"--auth_open takes {', '.join(OPENABLE)} (comma-separated, or empty), "
                             f"not {', '.join(sorted(unknown))}")

    def export(self) -> None:
        """For worker processes, which read it with `current()`."""
        os.environ[TOKEN_FILE_ENV] = self.token_file or ""
        os.environ[OPEN_ENV] = ",".join(sorted(self.open))
        os.environ[REPOSITORY_ENV] = "true" if self.repository_api else "false"
        os.environ[MODEL_ENV] = self.model_name or ""


def parse_open(text: str) -> frozenset:
    return frozenset(p.strip() for p in text.split(",") if p.strip())


@functools.cache
def current() -> Policy:
    return Policy(token_file=os.environ.get(TOKEN_FILE_ENV) or None,
                  open=parse_open(os.environ.get(OPEN_ENV, ",".join(OPENABLE))),
                  repository_api=os.environ.get(REPOSITORY_ENV, "false").lower() == "true",
                  model_name=os.environ.get(MODEL_ENV) or None)


class TokenFile:
    """The tokens in a file, re-read when it changes; `refusal` judges an Authorization header."""

    def __init__(self, path: str):
        self.path = path
        self._key: Optional[tuple] = None
        self._tokens: tuple[bytes, ...] = ()
        self._failing = False

    def tokens(self) -> tuple[bytes, ...]:
        try:
            st = os.stat(self.path)  # follows the Secret volume's ..data symlink, swapped on update
            key = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
            if key != self._key:
                with open(self.path, "rb") as fh:
                    text = fh.read()
                self._key, self._tokens = key, self._parse(text)
        except OSError as exc:
            if not self._failing:
                logger.error("token file %s not readable (%s): the %d token(s) read before stay in force",
                             self.path, exc.strerror or exc, len(self._tokens))
                self._failing = True
            return self._tokens
        if self._failing:
            logger.warning("token file %s readable again", self.path)
            self._failing = False
        return self._tokens

    def _parse(self, text: bytes) -> tuple[bytes, ...]:
        lines = [line.strip() for line in text.splitlines()]
        lines = [line for line in lines if line and not line.startswith(b"#")]
        tokens = tuple(line for line in lines if TOKEN68.fullmatch(line))
        if len(tokens) < len(lines):
            logger.warning("token file %s: %d line(s) are not a token (RFC 6750 token68) and are ignored",
                           self.path, len(lines) - len(tokens))
        if tokens:
            logger.info("token file %s read: %d token(s)", self.path, len(tokens))
        else:
            logger.warning("token file %s holds no token: every call that needs one is refused", self.path)
        return tokens

    def refusal(self, values: list[bytes]) -> Optional[str]:
        """None if `values` (every Authorization header of the call) is one bearer token in the file,
        else the reason: missing, malformed or invalid."""
        if not values:
            return "missing"
        match = BEARER.fullmatch(values[0]) if len(values) == 1 else None
        if match is None:
            return "malformed"
        presented, known = match.group(1), self.tokens()
        valid = False
        for token in known:  # every one, whatever matched: the time taken says nothing of which
            valid |= hmac.compare_digest(token, presented)
        return None if valid else "invalid"


def refused(protocol: str, reason: str) -> str:
    metrics.AUTH_FAILURES.labels(protocol, reason).inc()
    logger.info("refused %s call: %s token", protocol, reason)
    return MESSAGES[reason]


class Gate:
    """What a process checks before a call reaches a handler, once built from the policy."""

    def __init__(self, policy: Policy, registry=None):
        self.policy = policy
        self.registry = registry
        self.tokens = TokenFile(policy.token_file) if policy.token_file else None

    def _open_path(self, path: str) -> bool:
        if path == METRICS_PATH:
            return "metrics" in self.policy.open
        return "health" in self.policy.open and HEALTH_PATHS.match(path) is not None

    def model_live(self) -> bool:
        if self.registry is None or self.policy.model_name is None:
            return True
        model = self.registry.get_model(self.policy.model_name)
        return model is not None and bool(getattr(model, "ready", False))

    def rest_refusal(self, scope) -> Optional[tuple[int, bytes, tuple]]:
        """(status, body, extra headers) of the reply a REST call gets instead of its handler, or None."""
        path = scope["path"]
        if self.tokens is not None and not self._open_path(path):
            reason = self.tokens.refusal([v for k, v in scope["headers"] if k == b"authorization"])
            if reason is not None:
                return 401, orjson.dumps({"error": refused("rest", reason)}), ((b"www-authenticate", CHALLENGE[reason]),)
        if path.startswith(REPOSITORY_PREFIX) and not self.policy.repository_api:
            return 404, orjson.dumps({"error": "the model repository API is off (--enable_repository_api)"}), ()
        if path in LIVE_PATHS and not self.model_live():
            return 503, orjson.dumps({"error": f"model {self.policy.model_name} is not loaded"}), ()
        return None

    def grpc_refusal(self, path: Optional[bytes], authorization: Iterable[bytes]) -> Optional[str]:
        """The grpc-message of an UNAUTHENTICATED reply, or None to go on."""
        if self.tokens is None or ("health" in self.policy.open and path is not None
                                   and path.decode("latin-1") in GRPC_HEALTH):
            return None
        reason = self.tokens.refusal(list(authorization))
        return None if reason is None else refused("grpc", reason)


def grpcio_servicer(base: type, policy: Policy) -> type:
    """`base` (KServe's servicer, for its grpcio server) with the gate before every RPC, and without
    the repository RPCs unless the policy has them."""
    from grpc_interceptor.exceptions import Unauthenticated, Unimplemented
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    gate = Gate(policy)

    def guarded(name: str, method):
        async def rpc(self, request, context):
            if name in GRPC_REPOSITORY and not policy.repository_api:
                raise Unimplemented("the model repository API is off (--enable_repository_api)")
            metadata = context.invocation_metadata() or ()
            message = gate.grpc_refusal(f"{GRPC_SERVICE}{name}".encode(), [
                v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v
                for k, v in metadata if k == "authorization"])
            if message is not None:
                raise Unauthenticated(message)  # KServe's interceptor turns it into the status
            return await method(self, request, context)

        rpc.__name__ = name
        return rpc

    names = [m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
             if not (m.client_streaming or m.server_streaming) and hasattr(base, m.name)
             and (policy.token_file or m.name in GRPC_REPOSITORY)]  # nothing in the way when auth is off
    return type(f"Guarded{base.__name__}", (base,), {n: guarded(n, getattr(base, n)) for n in names})

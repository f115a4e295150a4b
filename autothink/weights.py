"""Weight sync over gRPC (proto/autothink/v1/weights.proto): versioned, chunked, verified.

The learner :meth:`WeightStore.publish`-es each new policy version; :func:`serve` exposes the
store.  Consumers (rollout replicas, the gateway) use :class:`WeightClient` to watch for newer
versions and fetch one as a stream of chunks; :meth:`WeightClient.fetch` returns the tensors only
when every tensor arrived whole and its sha256 matches, and :class:`WeightFollower` applies
versions strictly forward.  Messages are at most ``chunk_bytes`` long, so any model size works.
A shared token in the ``authorization`` metadata authenticates clients.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import torch

from autothink.v1 import weights_pb2 as pb
from autothink.v1 import weights_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


class WeightIntegrityError(RuntimeError):
    """A fetched version was incomplete or failed its checksums; it must not be applied."""


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes()


def tensor_from(buf: bytes | bytearray, dtype: str, shape: list[int]) -> torch.Tensor:
    if dtype not in _DTYPES:
        raise WeightIntegrityError(f"unknown dtype {dtype!r}")
    if len(buf) == 0:
        return torch.empty(shape, dtype=_DTYPES[dtype])
    writable = buf if isinstance(buf, bytearray) else bytearray(buf)  # no second copy of a received buffer
    return torch.frombuffer(writable, dtype=torch.uint8).view(_DTYPES[dtype]).reshape(shape)


@dataclass
class _Tensor:
    name: str
    dtype: str
    shape: list[int]
    data: bytes
    sha256: str


@dataclass
class _Version:
    number: int
    tensors: list[_Tensor]
    digest: str
    published: float

    @property
    def total_bytes(self) -> int:
        return sum(len(t.data) for t in self.tensors)


def manifest_digest(checksums: Mapping[str, str]) -> str:
    """One digest over the per-tensor checksums, in name order."""
    h = hashlib.sha256()
    for name in sorted(checksums):
        h.update(name.encode() + b"\0" + checksums[name].encode() + b"\n")
    return h.hexdigest()


class WeightStore:
    """The published versions (the newest ``keep`` of them), and a condition to wait for more."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._versions: OrderedDict[int, _Version] = OrderedDict()
        self._cond = threading.Condition()
        self.closed = False

    def publish(self, version: int, state_dict: Mapping[str, torch.Tensor]) -> None:
        tensors = []
        for name, t in state_dict.items():
            if t.dtype not in _NAMES:
                raise ValueError(f"{name}: dtype {t.dtype} cannot be sent")
            data = tensor_bytes(t)
            tensors.append(_Tensor(name, _NAMES[t.dtype], list(t.shape), data, hashlib.sha256(data).hexdigest()))
        digest = manifest_digest({t.name: t.sha256 for t in tensors})
        with self._cond:
            if self._versions and version <= next(reversed(self._versions)):
                raise ValueError(f"version {version} is not newer than {next(reversed(self._versions))}")
            self._versions[version] = _Version(version, tensors, digest, time.time())
            while len(self._versions) > self.keep:
                self._versions.popitem(last=False)
            self._cond.notify_all()
        log.info("published policy version %d (%d tensors, %.1f MB)", version, len(tensors), sum(len(t.data) for t in tensors) / 1e6)

    def latest(self) -> _Version | None:
        with self._cond:
            return next(reversed(self._versions.values())) if self._versions else None

    def get(self, version: int) -> _Version | None:
        with self._cond:
            return self._versions.get(version)

    def close(self) -> None:
        """End every watch stream (a server stop alone leaves them waiting, holding the process)."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_newer(self, after: int, timeout: float) -> _Version | None:
        with self._cond:
            self._cond.wait_for(lambda: self.closed or (bool(self._versions) and next(reversed(self._versions)) > after), timeout)
            v = next(reversed(self._versions.values())) if self._versions else None
            return v if v is not None and v.number > after else None


def _info(v: _Version) -> pb.VersionInfo:
    return pb.VersionInfo(
        policy_version=v.number, num_tensors=len(v.tensors), total_bytes=v.total_bytes,
        manifest_digest=v.digest, published_unix_s=v.published,
    )


class _Servicer(pb_grpc.WeightServiceServicer):
    def __init__(self, store: WeightStore, chunk_bytes: int):
        self.store = store
        self.chunk_bytes = chunk_bytes

    def WatchVersions(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.VersionInfo]:
        after = request.after_version
        while context.is_active() and not self.store.closed:
            v = self.store.wait_newer(after, timeout=0.5)
            if v is not None:
                after = v.number
                yield _info(v)

    def FetchVersion(self, request: pb.FetchRequest, context: grpc.ServicerContext) -> Iterator[pb.TensorChunk]:
        v = self.store.get(request.policy_version)
        if v is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"policy version {request.policy_version} is not available")
        wanted = set(request.names)
        for t in v.tensors:
            if wanted and t.name not in wanted:
                continue
            n = len(t.data)
            offsets = range(0, max(n, 1), self.chunk_bytes)
            for k, off in enumerate(offsets):
                last = k == len(offsets) - 1
                yield pb.TensorChunk(
                    policy_version=v.number, name=t.name, dtype=t.dtype, shape=t.shape, total_bytes=n, offset=off,
                    data=t.data[off : off + self.chunk_bytes], sha256=t.sha256 if last else "", last_chunk=last,
                )


class _TokenAuth(grpc.ServerInterceptor):
    def __init__(self, token: str):
        self.expected = f"Bearer {token}"

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong weight-service token")

        self._deny = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        metadata = dict(handler_call_details.invocation_metadata or ())
        if metadata.get("authorization") != self.expected:
            return self._deny
        return continuation(handler_call_details)


def serve(store: WeightStore, bind: str, token: str = "", chunk_bytes: int = 4 << 20, max_workers: int = 16) -> grpc.Server:
    """Start the weight service on ``bind`` (host:port; port 0 picks one: see ``server.port``)."""
    interceptors = [_TokenAuth(token)] if token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), interceptors=interceptors, options=_UNLIMITED)
    pb_grpc.add_WeightServiceServicer_to_server(_Servicer(store, chunk_bytes), server)
    port = server.add_insecure_port(bind)
    if port == 0:
        raise RuntimeError(f"cannot bind the weight service to {bind}")
    server.start()
    server.port = port  # type: ignore[attr-defined]
    log.info("weight service listening on %s", bind.rsplit(":", 1)[0] + f":{port}")
    return server


class WeightClient:
    def __init__(self, address: str, token: str = "", timeout_s: float = 600.0):
        self.channel = grpc.insecure_channel(address, options=_UNLIMITED)
        self.stub = pb_grpc.WeightServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s = timeout_s

    def watch(self, after_version: int = 0, timeout_s: float | None = None) -> Iterator[pb.VersionInfo]:
        """Announcements of versions newer than ``after_version``, as they are published."""
        return self.stub.WatchVersions(pb.WatchRequest(after_version=after_version), metadata=self.metadata, timeout=timeout_s)

    def fetch(self, info: pb.VersionInfo) -> dict[str, torch.Tensor]:
        """All tensors of a version, verified against their checksums and the version's manifest."""
        bufs: dict[str, bytearray] = {}
        meta: dict[str, tuple[str, list[int], int]] = {}
        checksums: dict[str, str] = {}
        stream = self.stub.FetchVersion(pb.FetchRequest(policy_version=info.policy_version), metadata=self.metadata, timeout=self.timeout_s)
        for chunk in stream:
            if chunk.policy_version != info.policy_version:
                raise WeightIntegrityError(f"chunk of version {chunk.policy_version} in a fetch of {info.policy_version}")
            buf = bufs.setdefault(chunk.name, bytearray())
            if chunk.offset != len(buf):
                raise WeightIntegrityError(f"{chunk.name}: chunk at offset {chunk.offset}, expected {len(buf)}")
            buf += chunk.data
            meta[chunk.name] = (chunk.dtype, list(chunk.shape), chunk.total_bytes)
            if chunk.last_chunk:
                checksums[chunk.name] = chunk.sha256
        if len(bufs) != info.num_tensors or set(checksums) != set(bufs):
            raise WeightIntegrityError(f"got {len(checksums)} complete tensors of {info.num_tensors}")
        out = {}
        for name, buf in bufs.items():
            dtype, shape, total = meta[name]
            if len(buf) != total:
                raise WeightIntegrityError(f"{name}: {len(buf)} bytes of {total}")
            if hashlib.sha256(buf).hexdigest() != checksums[name]:
                raise WeightIntegrityError(f"{name}: checksum mismatch")
            out[name] = tensor_from(buf, dtype, shape)
        if manifest_digest(checksums) != info.manifest_digest:
            raise WeightIntegrityError("manifest digest mismatch")
        return out

    def close(self) -> None:
        self.channel.close()


class WeightFollower:
    """Watches a weight service and hands each newer, verified version to ``apply``, in order.

    ``apply(version, tensors)`` is called from the follower's thread; a version that fails
    verification is skipped (the consumer keeps what it has) and the next announcement is awaited.
    """

    def __init__(self, client: WeightClient, apply: Callable[[int, dict[str, torch.Tensor]], None], current_version: int = 0):
        self.client = client
        self.apply = apply
        self.version = current_version
        self.rejected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weight-follower", daemon=True)

    def start(self) -> WeightFollower:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for info in self.client.watch(after_version=self.version):
                    if self._stop.is_set():
                        return
                    if info.policy_version <= self.version:
                        continue  # versions only move forward
                    try:
                        tensors = self.client.fetch(info)
                    except WeightIntegrityError as e:
                        self.rejected += 1
                        log.error("rejected policy version %d: %s", info.policy_version, e)
                        continue
                    self.apply(info.policy_version, tensors)
                    self.version = info.policy_version
            except grpc.RpcError as e:
                if self._stop.is_set():
                    return
                log.warning("weight service unavailable (%s); retrying", e.code() if hasattr(e, "code") else e)
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        self.client.close()

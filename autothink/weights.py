"""Weight sync over gRPC (proto/autothink/v1/weights.proto): versioned, chunked, verified.

The learner :meth:`WeightStore.publish`-es each new policy version; :func:`serve` exposes the
store.  Consumers (rollout replicas, the gateway) use :class:`WeightClient` to watch for newer
versions and fetch one (over the bulk port, or as a stream of chunks); :meth:`WeightClient.fetch`
returns the tensors only when every tensor arrived whole and its xxh3-128 checksum matches (one
checksum per tensor, computed once, off the training loop), and :class:`WeightFollower` applies
versions strictly forward.  Messages are at most ``chunk_bytes`` long, so any model size works.
A shared token in the ``authorization`` metadata authenticates clients: compared in constant
time, exactly one ``authorization`` entry per call, and :func:`serve` refuses an address other
machines can reach without one (the gateway's rule for its API key).  A follower whose token is
refused stops and says so (:attr:`WeightFollower.fatal`): retrying cannot fix a wrong token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import torch
import xxhash

from autothink.config import is_loopback
from autothink.v1 import weights_pb2 as pb
from autothink.v1 import weights_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_ALIGN = 64  # tensors start on 64-byte boundaries in a version's blob, so any dtype views it in place


class WeightIntegrityError(RuntimeError):
    """A fetched version was incomplete or failed its checksums; it must not be applied."""


class WeightAuthError(RuntimeError):
    """The weight service refused this client's token: retrying with the same token cannot help."""


#: what the service answers a client it does not accept: permanent until the token changes
_AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


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
    offset: int  # in the version's blob
    nbytes: int
    xxh3: str  # xxh3-128 of the tensor's bytes: the one checksum, for the bulk and the stream path alike


@dataclass
class _Version:
    number: int
    tensors: list[_Tensor]
    blob: bytearray  # every tensor's bytes, aligned, in publication order
    digest: str
    published: float

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def data(self, t: _Tensor) -> memoryview:
        return memoryview(self.blob)[t.offset : t.offset + t.nbytes]


def view_tensor(blob: bytearray, offset: int, nbytes: int, dtype: str, shape: list[int]) -> torch.Tensor:
    """A tensor over ``blob[offset:offset + nbytes]`` without a copy."""
    if dtype not in _DTYPES:
        raise WeightIntegrityError(f"unknown dtype {dtype!r}")
    if nbytes == 0:
        return torch.empty(shape, dtype=_DTYPES[dtype])
    return torch.frombuffer(blob, dtype=torch.uint8, count=nbytes, offset=offset).view(_DTYPES[dtype]).reshape(shape)


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
        self._announcing: threading.Thread | None = None
        self.closed = False

    def publish(self, version: int, state_dict: Mapping[str, torch.Tensor], wait: bool = True,
                on_published: Callable[[int], None] | None = None) -> None:
        """Publish ``state_dict`` as ``version``.

        The tensors are copied once, here, into the version's aligned blob (from the device when
        they live on one), so the caller may change them as soon as this returns.  Checksums and
        the announcement follow; with ``wait=False`` they run on a background thread, off the
        training loop, and ``on_published(version)`` is called once consumers can see it.
        Versions are announced in the order they were published."""
        flat, total = [], 0
        for name, t in state_dict.items():
            if t.dtype not in _NAMES:
                raise ValueError(f"{name}: dtype {t.dtype} cannot be sent")
            flat.append((name, t, total))
            total += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
        with self._cond:
            if self._versions and version <= next(reversed(self._versions)):
                raise ValueError(f"version {version} is not newer than {next(reversed(self._versions))}")
        blob = bytearray(total)
        layout = []
        for name, t, off in flat:
            n = t.numel() * t.element_size()
            if n:
                src = t.detach().contiguous().view(-1).view(torch.uint8)
                torch.frombuffer(blob, dtype=torch.uint8, count=n, offset=off).copy_(src)  # device -> host: the only copy
            layout.append((name, _NAMES[t.dtype], list(t.shape), off, n))
        previous = self._announcing

        def announce() -> None:
            if previous is not None:
                previous.join()  # keep announcements in version order
            tensors = [_Tensor(name, dtype, shape, off, n, xxhash.xxh3_128_hexdigest(memoryview(blob)[off : off + n]))
                       for name, dtype, shape, off, n in layout]
            digest = manifest_digest({t.name: t.xxh3 for t in tensors})
            with self._cond:
                self._versions[version] = _Version(version, tensors, blob, digest, time.time())
                while len(self._versions) > self.keep:
                    self._versions.popitem(last=False)
                self._cond.notify_all()
            log.info("published policy version %d (%d tensors, %.1f MB)", version, len(tensors), sum(t.nbytes for t in tensors) / 1e6)
            if on_published is not None:
                try:
                    on_published(version)
                except Exception:  # noqa: BLE001 - the version is out; a failed side note must not hide that
                    log.exception("after publishing version %d", version)

        if wait:
            announce()
            return
        self._announcing = threading.Thread(target=announce, name=f"publish-v{version}", daemon=True)
        self._announcing.start()

    def flush(self) -> None:
        """Wait until every version published so far is announced."""
        if self._announcing is not None:
            self._announcing.join()

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


class BulkServer:
    """The bulk port: a plain TCP socket that sends a version's blob to whoever presents a ticket
    issued by ``FetchManifest`` (one use, one minute).  gRPC keeps the manifest and checksums."""

    TICKET_S = 60.0
    SLICE_BYTES = 8 << 20
    IDLE_TIMEOUT_S = 30.0

    def __init__(self, store: WeightStore, host: str, port: int):
        self.store = store
        self.sock = socket.create_server((host, port), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.sent = 0  # blobs sent (tests and logs)
        self._tickets: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="weights-bulk", daemon=True).start()

    def issue(self, version: int) -> str:
        ticket = secrets.token_hex(16)
        now = time.monotonic()
        with self._lock:
            self._tickets = {k: v for k, v in self._tickets.items() if v[1] > now}
            self._tickets[ticket] = (version, now + self.TICKET_S)
        return ticket

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._send, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.IDLE_TIMEOUT_S)
            try:
                line = b""
                while not line.endswith(b"\n") and len(line) < 64:
                    piece = conn.recv(64 - len(line))
                    if not piece:
                        return
                    line += piece
                with self._lock:
                    version, expires = self._tickets.pop(line.strip().decode(errors="replace"), (None, 0.0))
                v = self.store.get(version) if version is not None and expires > time.monotonic() else None
                if v is None:
                    return  # unknown, used or expired ticket, or a version no longer kept: nothing is sent
                conn.sendall(struct.pack(">Q", len(v.blob)))
                # bounded by progress, not by total time: each slice must go within the socket
                # timeout, so a slow but live client gets any size (a 3.5 GB model at 50 MB/s)
                blob = memoryview(v.blob)
                for off in range(0, len(blob), self.SLICE_BYTES):
                    conn.sendall(blob[off : off + self.SLICE_BYTES])
                self.sent += 1
            except OSError as e:
                log.warning("bulk transfer failed: %s", e)

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the other thread
        except OSError:
            pass
        self.sock.close()


class _Servicer(pb_grpc.WeightServiceServicer):
    """A sync gRPC server gives each call a thread for as long as it runs, and a watch runs for
    ever: watchers are capped (``max_watchers``) below the thread count, so however many
    consumers watch, manifests and fetches always find a thread."""

    def __init__(self, store: WeightStore, chunk_bytes: int, bulk: BulkServer | None = None, max_watchers: int = 256):
        self.store = store
        self.chunk_bytes = chunk_bytes
        self.bulk = bulk
        self.watchers = threading.BoundedSemaphore(max_watchers)

    def FetchManifest(self, request: pb.FetchRequest, context: grpc.ServicerContext) -> pb.Manifest:
        v = self.store.get(request.policy_version)
        if v is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"policy version {request.policy_version} is not available")
        return pb.Manifest(
            policy_version=v.number, total_bytes=len(v.blob), manifest_digest=v.digest,
            tensors=[pb.TensorMeta(name=t.name, dtype=t.dtype, shape=t.shape, offset=t.offset, nbytes=t.nbytes,
                                   xxh3_128=t.xxh3) for t in v.tensors],
            bulk_port=self.bulk.port if self.bulk is not None else 0,
            ticket=self.bulk.issue(v.number) if self.bulk is not None else "",
        )

    def WatchVersions(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.VersionInfo]:
        if not self.watchers.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many watchers on this weight service; retry later")
        try:
            after = request.after_version
            while context.is_active() and not self.store.closed:
                v = self.store.wait_newer(after, timeout=0.5)
                if v is not None:
                    after = v.number
                    yield _info(v)
        finally:
            self.watchers.release()

    def FetchVersion(self, request: pb.FetchRequest, context: grpc.ServicerContext) -> Iterator[pb.TensorChunk]:
        v = self.store.get(request.policy_version)
        if v is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"policy version {request.policy_version} is not available")
        wanted = set(request.names)
        for t in v.tensors:
            if wanted and t.name not in wanted:
                continue
            n, data = t.nbytes, v.data(t)
            offsets = range(0, max(n, 1), self.chunk_bytes)
            for k, off in enumerate(offsets):
                last = k == len(offsets) - 1
                yield pb.TensorChunk(
                    policy_version=v.number, name=t.name, dtype=t.dtype, shape=t.shape, total_bytes=n, offset=off,
                    data=bytes(data[off : off + self.chunk_bytes]), last_chunk=last,
                )


class _TokenAuth(grpc.ServerInterceptor):
    """Every call must carry exactly one ``authorization: Bearer TOKEN`` entry.  The comparison is
    constant-time (:func:`hmac.compare_digest`), and a call with two entries is refused rather than
    judged by whichever one a dict would keep."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong weight-service token")

        self._deny = grpc.unary_stream_rpc_method_handler(deny)
        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)

    def allowed(self, metadata: Any) -> bool:
        given = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
        if len(given) != 1:
            return False
        value = given[0].encode() if isinstance(given[0], str) else bytes(given[0])
        return hmac.compare_digest(value, self.expected)

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        if not self.allowed(handler_call_details.invocation_metadata):
            unary = handler_call_details.method.endswith("/FetchManifest")
            return self._deny_unary if unary else self._deny
        return continuation(handler_call_details)


def check_exposure(bind: str, token: str, allow_no_token: bool = False) -> str | None:
    """Why the weight service must not start on ``bind`` with ``token``, or None: anyone who can
    reach it can read the policy's weights, so an address beyond this machine needs a token.

    >>> check_exposure("127.0.0.1:50051", "") is None, check_exposure("0.0.0.0:50051", "t") is None
    (True, True)
    >>> check_exposure("0.0.0.0:50051", "")[:50]
    'refusing to serve the weights on 0.0.0.0:50051 wit'
    """
    host = bind.rpartition(":")[0]
    if not token and not allow_no_token and not is_loopback(host):
        return (f"refusing to serve the weights on {bind} without a token: set weights.token (AUTOTHINK_WEIGHTS__TOKEN), "
                "bind 127.0.0.1, or pass allow_no_token to accept the risk")
    return None


def serve(store: WeightStore, bind: str, token: str = "", chunk_bytes: int = 4 << 20, max_workers: int = 16, bulk: bool = True,
          max_watchers: int = 256, allow_no_token: bool = False) -> grpc.Server:
    """Start the weight service on ``bind`` (host:port; port 0 picks one: see ``server.port``).

    A ``bind`` other machines can reach (``0.0.0.0``, ``[::]``, a LAN address) needs a ``token``
    unless ``allow_no_token``: :func:`check_exposure` says why, and this raises ``ValueError``.

    ``max_workers`` threads serve manifests and fetches, on top of one thread per watcher (at
    most ``max_watchers``; more are refused with RESOURCE_EXHAUSTED and retry).  With ``bulk``,
    the bulk port listens on the gRPC port + 1 (any free port when the gRPC port was 0); if it
    cannot bind, clients fall back to the chunk stream."""
    if (why := check_exposure(bind, token, allow_no_token)) is not None:
        raise ValueError(why)
    interceptors = [_TokenAuth(token)] if token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers + max_watchers), interceptors=interceptors,
                         options=_UNLIMITED)
    host, _, want = bind.rpartition(":")
    bulk_server = None
    servicer = _Servicer(store, chunk_bytes, max_watchers=max_watchers)
    pb_grpc.add_WeightServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(bind)
    if port == 0:
        raise RuntimeError(f"cannot bind the weight service to {bind}")
    if bulk:
        bulk_host = host.strip("[]")
        bulk_host = "0.0.0.0" if bulk_host in ("", "::", "*") else bulk_host
        try:
            bulk_server = BulkServer(store, bulk_host, 0 if want == "0" else port + 1)
        except OSError as e:
            log.warning("no bulk port (%s); consumers fetch weights over the gRPC stream", e)
    servicer.bulk = bulk_server
    server.start()
    server.port = port  # type: ignore[attr-defined]
    server.bulk = bulk_server  # type: ignore[attr-defined]
    if bulk_server is not None:
        stop = server.stop

        def stop_both(grace: float | None) -> Any:
            bulk_server.close()
            return stop(grace)

        server.stop = stop_both  # type: ignore[method-assign]
    log.info("weight service listening on %s (bulk port %s)", host + f":{port}", bulk_server.port if bulk_server else "off")
    return server


class WeightClient:
    def __init__(self, address: str, token: str = "", timeout_s: float = 600.0):
        self.channel = grpc.insecure_channel(address, options=_UNLIMITED)
        self.stub = pb_grpc.WeightServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s = timeout_s
        self.host = address.rpartition(":")[0].strip("[]") or "127.0.0.1"
        self.last_path = ""  # "bulk" or "stream": how the last fetch travelled
        self._buffer: bytearray | None = None  # the last bulk blob, reused once its tensors are gone
        self.buffers_allocated = 0

    def check_token(self, timeout_s: float = 5.0) -> bool:
        """Ask the service whether it accepts this client's token, with one cheap call (a manifest
        of a version that cannot exist).  True: accepted; False: the service did not answer (not
        up yet, which a follower rides out); raises :class:`WeightAuthError` when it refused."""
        try:
            self.stub.FetchManifest(pb.FetchRequest(policy_version=-1), metadata=self.metadata, timeout=timeout_s)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code in _AUTH_CODES:
                raise WeightAuthError(f"the weight service refused the token ({code}: {e.details() if hasattr(e, 'details') else e})") from None
            return code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED)
        return True

    def watch(self, after_version: int = 0, timeout_s: float | None = None) -> Iterator[pb.VersionInfo]:
        """Announcements of versions newer than ``after_version``, as they are published."""
        return self.stub.WatchVersions(pb.WatchRequest(after_version=after_version), metadata=self.metadata, timeout=timeout_s)

    def fetch(self, info: pb.VersionInfo) -> dict[str, torch.Tensor]:
        """All tensors of a version, verified against their checksums and the version's manifest:
        over the bulk port when the service has one, else (or if it cannot be reached) over the
        gRPC chunk stream."""
        try:
            manifest = self.stub.FetchManifest(pb.FetchRequest(policy_version=info.policy_version), metadata=self.metadata, timeout=60)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:  # an older service has no bulk path
                raise
            manifest = None
        if manifest is not None and manifest.bulk_port:
            try:
                out = self._fetch_bulk(info, manifest)
                self.last_path = "bulk"
                return out
            except (OSError, EOFError) as e:
                log.warning("bulk port %s:%d unusable (%s); fetching over the gRPC stream", self.host, manifest.bulk_port, e)
        out = self._fetch_stream(info, manifest)
        self.last_path = "stream"
        return out

    def _fetch_bulk(self, info: pb.VersionInfo, m: pb.Manifest) -> dict[str, torch.Tensor]:
        if m.policy_version != info.policy_version or m.manifest_digest != info.manifest_digest:
            raise WeightIntegrityError("the manifest is not the announced version's")
        if len(m.tensors) != info.num_tensors or manifest_digest({t.name: t.xxh3_128 for t in m.tensors}) != info.manifest_digest:
            raise WeightIntegrityError("manifest digest mismatch")
        for t in m.tensors:
            if t.offset < 0 or t.nbytes < 0 or t.offset + t.nbytes > m.total_bytes:
                raise WeightIntegrityError(f"{t.name}: outside the blob")
        with socket.create_connection((self.host, m.bulk_port), timeout=30) as conn:
            conn.sendall(m.ticket.encode() + b"\n")
            header = _recv_exact(conn, 8)
            (n,) = struct.unpack(">Q", header)
            if n != m.total_bytes:
                raise WeightIntegrityError(f"bulk port announced {n} bytes, the manifest {m.total_bytes}")
            blob = self._take_buffer(n)
            view = memoryview(blob)
            got = 0
            while got < n:
                k = conn.recv_into(view[got:], min(n - got, 64 << 20))
                if k == 0:  # a transport failure, not a bad version: the stream path may still work
                    raise ConnectionError(f"bulk transfer ended after {got} of {n} bytes")
                got += k
        out = {}
        for t in m.tensors:
            if xxhash.xxh3_128_hexdigest(view[t.offset : t.offset + t.nbytes]) != t.xxh3_128:
                raise WeightIntegrityError(f"{t.name}: checksum mismatch")
            out[t.name] = view_tensor(blob, t.offset, t.nbytes, t.dtype, list(t.shape))
        return out

    def _take_buffer(self, n: int) -> bytearray:
        """A buffer for an ``n``-byte blob: the previous one when nothing views it any more (every
        version of a model has the same size, and a fresh 3 GB buffer costs ~1 s of page zeroing),
        else a new one.  The tensors a fetch returns are views of its buffer."""
        buf = self._buffer
        # references: self._buffer and getrefcount's argument; any tensor or memoryview adds one
        if buf is not None and len(buf) == n and sys.getrefcount(buf) <= 3:
            return buf
        self._buffer = None
        self._buffer = bytearray(n)
        self.buffers_allocated += 1
        return self._buffer

    def _fetch_stream(self, info: pb.VersionInfo, manifest: pb.Manifest | None = None) -> dict[str, torch.Tensor]:
        """The version as a stream of chunks, checked against the manifest's checksums."""
        if manifest is None:
            manifest = self.stub.FetchManifest(pb.FetchRequest(policy_version=info.policy_version), metadata=self.metadata, timeout=60)
        checksums = {t.name: t.xxh3_128 for t in manifest.tensors}
        if len(checksums) != info.num_tensors or manifest_digest(checksums) != info.manifest_digest:
            raise WeightIntegrityError("manifest digest mismatch")
        bufs: dict[str, bytearray] = {}
        meta: dict[str, tuple[str, list[int], int]] = {}
        complete: set[str] = set()
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
                complete.add(chunk.name)
        if len(bufs) != info.num_tensors or complete != set(bufs) or complete != set(checksums):
            raise WeightIntegrityError(f"got {len(complete)} complete tensors of {info.num_tensors}")
        out = {}
        for name, buf in bufs.items():
            dtype, shape, total = meta[name]
            if len(buf) != total:
                raise WeightIntegrityError(f"{name}: {len(buf)} bytes of {total}")
            if xxhash.xxh3_128_hexdigest(buf) != checksums[name]:
                raise WeightIntegrityError(f"{name}: checksum mismatch")
            out[name] = tensor_from(buf, dtype, shape)
        return out

    def close(self) -> None:
        self.channel.close()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        piece = conn.recv(n - len(data))
        if not piece:
            raise EOFError("the bulk port closed the connection (ticket refused?)")
        data += piece
    return data


class WeightFollower:
    """Watches a weight service and hands each newer, verified version to ``apply``, in order.

    ``apply(version, tensors)`` is called from the follower's thread.  A version that fails
    verification is skipped (the consumer keeps what it has) and the next announcement is awaited.
    A service that refuses the token (UNAUTHENTICATED, PERMISSION_DENIED) is not retried: the
    token cannot change while the process runs, so the follower stops, :attr:`fatal` and
    :attr:`last_error` say why and :attr:`healthy` is False for good (#39: it used to retry
    quietly while the gateway's /ready said ``healthy: true``).
    *Any* other error -- the service gone, ``apply`` failing on a full /dev/shm -- is logged,
    counted and retried with backoff (up to 5 s); the thread never dies of it, and :attr:`healthy`
    turns False while a newer version keeps failing, so the service's /health can say that it is
    running on stale weights instead of doing so silently.
    """

    UNHEALTHY_AFTER = 3  # failed attempts in a row at a version the service has not got

    def __init__(self, client: WeightClient, apply: Callable[[int, dict[str, torch.Tensor]], None], current_version: int = 0):
        self.client = client
        self.apply = apply
        self.version = current_version
        self.rejected = 0
        self.failures = 0  # attempts in a row that failed to fetch or apply an announced newer version
        self.last_error: str | None = None
        self.fatal: str | None = None  # why following stopped for good (the token was refused)
        self.newest_seen = current_version
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weight-follower", daemon=True)

    @property
    def healthy(self) -> bool:
        """The thread runs, and no newer version has failed to apply ``UNHEALTHY_AFTER`` times in a row."""
        return (self.fatal is None and (self._thread.is_alive() or self._stop.is_set())
                and self.failures < self.UNHEALTHY_AFTER)

    def status(self) -> dict[str, object]:
        return {"version": self.version, "newest_seen": self.newest_seen, "failures": self.failures,
                "rejected": self.rejected, "last_error": self.last_error, "fatal": self.fatal is not None,
                "healthy": self.healthy}

    def start(self) -> WeightFollower:
        self._thread.start()
        return self

    def _run(self) -> None:
        wait = 1.0
        while not self._stop.is_set():
            try:
                for info in self.client.watch(after_version=self.version):
                    wait = 1.0
                    if self._stop.is_set():
                        return
                    self.newest_seen = max(self.newest_seen, info.policy_version)
                    if info.policy_version <= self.version:
                        continue  # versions only move forward
                    try:
                        tensors = self.client.fetch(info)
                    except WeightIntegrityError as e:
                        self.rejected += 1
                        log.error("rejected policy version %d: %s", info.policy_version, e)
                        continue
                    self.apply(info.policy_version, tensors)
                    del tensors  # frees the client's receive buffer for the next version
                    self.version = info.policy_version
                    self.failures, self.last_error = 0, None
            except grpc.RpcError as e:
                if self._stop.is_set():
                    return
                code = e.code() if hasattr(e, "code") else None
                if code in _AUTH_CODES:  # a wrong token stays wrong: stop, and say so where /ready shows it
                    detail = e.details() if hasattr(e, "details") else str(e)
                    self.fatal = self.last_error = f"the weight service refused the token ({code}: {detail})"
                    self.failures += 1
                    log.error("%s; not following new weights (still on policy version %d): fix the token and restart",
                              self.fatal, self.version)
                    return
                # a learner that finished or restarts: say so once, then back off quietly up to 5 s
                (log.warning if wait == 1.0 else log.debug)(
                    "weight service unavailable (%s); retrying (keeping policy version %d)", e.code() if hasattr(e, "code") else e, self.version)
                self._stop.wait(wait)
                wait = min(wait * 2, 5.0)
            except Exception as e:  # noqa: BLE001 - applying failed: keep the thread, count it, try again
                if self._stop.is_set():
                    return
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"[:500]
                log.exception("applying a new policy version failed (%d in a row; still on version %d); retrying in %.0f s",
                              self.failures, self.version, wait)
                self._stop.wait(wait)
                wait = min(wait * 2, 5.0)

    def stop(self) -> None:
        self._stop.set()
        self.client.close()

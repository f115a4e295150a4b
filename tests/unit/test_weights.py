"""Weight sync over real gRPC on loopback: chunking, checksums, auth, forward-only, drift."""

import filecmp
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch

from autothink import weights as W
from autothink.v1 import weights_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(300, 64, generator=g),  # 76.8 KB: many 1 KiB chunks
        "model.norm.weight": torch.randn(64, generator=g).to(torch.bfloat16),
        "lm_head.bias": torch.zeros(0),
        "step": torch.tensor([seed], dtype=torch.int64),
    }


@pytest.fixture
def service():
    store = W.WeightStore()
    server = W.serve(store, "127.0.0.1:0", token="s3cret", chunk_bytes=1024)
    yield store, f"127.0.0.1:{server.port}"
    server.stop(0)


@pytest.fixture
def service_server():
    store = W.WeightStore()
    server = W.serve(store, "127.0.0.1:0", token="s3cret", chunk_bytes=1024)
    yield store, server, f"127.0.0.1:{server.port}"
    server.stop(0)


def test_fetch_round_trip_in_chunks(service):
    store, addr = service
    store.publish(1, _state(1))
    client = W.WeightClient(addr, token="s3cret")
    info = next(client.watch(after_version=0, timeout_s=10))
    assert info.policy_version == 1 and info.num_tensors == 4
    got = client.fetch(info)
    assert client.last_path == "bulk"
    for name, t in _state(1).items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    streamed = client._fetch_stream(info)  # the gRPC chunk path gives the same tensors
    assert all(torch.equal(streamed[k], got[k]) for k in got)
    chunks = list(client.stub.FetchVersion(pb.FetchRequest(policy_version=1), metadata=client.metadata))
    assert len(chunks) > 75 and max(len(c.data) for c in chunks) <= 1024
    client.close()


def test_token_is_required(service):
    store, addr = service
    store.publish(1, _state(1))
    for token in ("", "wrong"):
        client = W.WeightClient(addr, token=token)
        with pytest.raises(grpc.RpcError) as e:
            next(client.watch(timeout_s=5))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        client.close()


def test_versions_only_move_forward_and_old_ones_expire(service):
    store, addr = service
    store.publish(3, _state(3))
    with pytest.raises(ValueError, match="not newer"):
        store.publish(2, _state(2))
    store.publish(4, _state(4))
    store.publish(5, _state(5))
    client = W.WeightClient(addr, token="s3cret")
    with pytest.raises(grpc.RpcError) as e:
        client.fetch(pb.VersionInfo(policy_version=3, num_tensors=4))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    client.close()


def test_bulk_path_aligns_any_dtype_and_verifies(service_server):
    store, server, addr = service_server
    state = {"a": torch.tensor([1, 2, 3], dtype=torch.int8), "b": torch.randn(5, 3), "c": torch.tensor(True),
             "d": torch.randn(7, dtype=torch.float64).to(torch.bfloat16), "e": torch.zeros(0)}
    store.publish(1, state)
    client = W.WeightClient(addr, token="s3cret")
    info = next(client.watch(timeout_s=10))
    got = client.fetch(info)
    assert client.last_path == "bulk"
    deadline = time.time() + 5
    while server.bulk.sent < 1 and time.time() < deadline:  # counted after sendall returns, in the server's thread
        time.sleep(0.01)
    assert server.bulk.sent == 1
    for k, t in state.items():
        assert got[k].dtype == t.dtype and got[k].shape == t.shape and torch.equal(got[k], t), k
    # a byte flipped in the bytes the bulk port sends: the version is refused, not applied
    v = store.get(1)
    v.blob[v.tensors[1].offset + 5] ^= 0xFF
    with pytest.raises(W.WeightIntegrityError, match="b: checksum mismatch"):
        client.fetch(info)
    client.close()


def test_bulk_buffer_is_reused_only_when_nothing_views_it(service_server):
    store, server, addr = service_server
    client = W.WeightClient(addr, token="s3cret")
    store.publish(1, _state(1))
    first = client.fetch(next(client.watch(timeout_s=10)))
    store.publish(2, _state(2))
    second = client.fetch(next(client.watch(after_version=1, timeout_s=10)))
    assert client.buffers_allocated == 2  # version 1's tensors are alive: a new buffer, and they stay intact
    assert int(first["step"][0]) == 1 and int(second["step"][0]) == 2
    del first, second
    store.publish(3, _state(3))
    third = client.fetch(next(client.watch(after_version=2, timeout_s=10)))
    assert client.buffers_allocated == 2 and int(third["step"][0]) == 3  # nothing viewed it any more: reused
    client.close()


def test_bulk_tickets_are_single_use(service_server):
    import socket

    store, server, addr = service_server
    store.publish(1, _state(1))
    client = W.WeightClient(addr, token="s3cret")
    m = client.stub.FetchManifest(pb.FetchRequest(policy_version=1), metadata=client.metadata)
    for expect_data in (True, False):
        with socket.create_connection(("127.0.0.1", m.bulk_port), timeout=10) as conn:
            conn.sendall(m.ticket.encode() + b"\n")
            first = conn.recv(8)
            assert bool(first) == expect_data
    client.close()


def test_without_the_bulk_port_the_stream_is_used(service_server):
    store, server, addr = service_server
    store.publish(1, _state(1))
    server.bulk.close()
    client = W.WeightClient(addr, token="s3cret")
    got = client.fetch(next(client.watch(timeout_s=10)))
    assert client.last_path == "stream" and torch.equal(got["step"], _state(1)["step"])
    client.close()


class _CorruptingServicer(W._Servicer):
    """Flips one byte of one chunk of version 2, as a bad link or a bad proxy might."""

    def FetchVersion(self, request, context):
        for k, chunk in enumerate(super().FetchVersion(request, context)):
            if request.policy_version == 2 and k == 7:
                data = bytearray(chunk.data)
                data[0] ^= 0xFF
                chunk.data = bytes(data)
            yield chunk


def test_follower_rejects_a_corrupted_version_and_keeps_the_old_one():
    from concurrent import futures

    from autothink.v1 import weights_pb2_grpc as pb_grpc

    store = W.WeightStore(keep=3)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_WeightServiceServicer_to_server(_CorruptingServicer(store, 1024), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    applied = []
    done = threading.Event()

    def apply(version, tensors):
        applied.append((version, int(tensors["step"][0])))
        if version == 3:
            done.set()

    follower = W.WeightFollower(W.WeightClient(f"127.0.0.1:{port}"), apply).start()
    store.publish(1, _state(1))
    deadline = time.time() + 10
    while not applied and time.time() < deadline:
        time.sleep(0.05)
    store.publish(2, _state(2))
    deadline = time.time() + 10
    while follower.rejected == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert follower.rejected == 1 and follower.version == 1  # the corrupted version is not applied
    store.publish(3, _state(3))
    assert done.wait(10)
    assert applied == [(1, 1), (3, 3)]
    follower.stop()
    server.stop(0)


def test_generated_code_matches_the_proto(tmp_path):
    subprocess.run(["bash", "scripts/gen_proto.sh", str(tmp_path)], cwd=ROOT, check=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    for name in ("weights_pb2.py", "weights_pb2_grpc.py"):
        assert filecmp.cmp(tmp_path / "autothink/v1" / name, ROOT / "autothink/v1" / name, shallow=False), (
            f"autothink/v1/{name} drifted from proto/: run `make proto`"
        )


def test_closing_the_store_ends_watch_streams(service):
    store, addr = service
    client = W.WeightClient(addr, token="s3cret")
    stream = client.watch(after_version=0, timeout_s=10)
    threading.Timer(0.3, store.close).start()
    t0 = time.time()
    assert list(stream) == [] and time.time() - t0 < 5  # ends, instead of holding a server thread
    client.close()


def test_follower_survives_a_failing_apply_and_says_so(service):
    """Any error while applying (a full /dev/shm, an engine that refuses) is counted, shown and retried;
    the thread lives on and the next attempt that works is applied."""
    store, addr = service
    applied, calls = [], []

    def apply(version, tensors):
        calls.append(version)
        if len(calls) <= 3:
            raise OSError(28, "No space left on device")
        applied.append(version)

    follower = W.WeightFollower(W.WeightClient(addr, token="s3cret"), apply).start()
    try:
        store.publish(1, _state(1))
        deadline = time.time() + 20
        while follower.failures < 3 and time.time() < deadline:
            time.sleep(0.02)
        status = follower.status()
        assert status["failures"] == 3 and "No space left" in status["last_error"] and status["newest_seen"] == 1
        assert not follower.healthy and follower.version == 0  # stale weights are reported, not hidden
        deadline = time.time() + 20
        while not applied and time.time() < deadline:
            time.sleep(0.05)
        assert applied == [1] and follower.version == 1 and follower.healthy and follower.failures == 0
        store.publish(2, _state(2))
        deadline = time.time() + 10
        while applied[-1] != 2 and time.time() < deadline:
            time.sleep(0.05)
        assert applied == [1, 2]
    finally:
        follower.stop()


def test_watchers_cannot_starve_fetches():
    """Each watch holds a server thread for ever; with more watchers than fetch threads, a fetch still answers."""
    store = W.WeightStore()
    server = W.serve(store, "127.0.0.1:0", max_workers=2, max_watchers=8)
    addr = f"127.0.0.1:{server.port}"
    clients = [W.WeightClient(addr) for _ in range(10)]
    try:
        streams = [c.watch(after_version=0, timeout_s=30) for c in clients]
        def hold(stream):
            try:
                next(stream, None)
            except grpc.RpcError:  # refused (RESOURCE_EXHAUSTED) or cancelled at the end
                pass

        threads = [threading.Thread(target=hold, args=(s,), daemon=True) for s in streams]
        for t in threads:
            t.start()
        time.sleep(0.5)  # 8 watchers hold their threads; 2 more were refused (RESOURCE_EXHAUSTED) and retry
        store.publish(1, _state(1))
        fetcher = W.WeightClient(addr)
        t0 = time.monotonic()
        info = pb.VersionInfo(policy_version=1, num_tensors=4, manifest_digest=store.get(1).digest)
        got = fetcher.fetch(info)
        assert time.monotonic() - t0 < 5 and torch.equal(got["step"], _state(1)["step"])
        fetcher.close()
    finally:
        for c in clients:
            c.close()
        store.close()
        server.stop(0)


def test_a_slow_client_gets_the_whole_version_and_a_cut_transfer_falls_back_to_the_stream(service_server):
    store, server, addr = service_server
    big = {"w": torch.arange(1 << 20, dtype=torch.float32)}  # 4 MiB
    store.publish(1, big)
    server.bulk.IDLE_TIMEOUT_S, server.bulk.SLICE_BYTES = 1.0, 256 << 10
    client = W.WeightClient(addr, token="s3cret")
    info = next(client.watch(after_version=0, timeout_s=10))
    real_recv = socket.socket.recv_into

    def slow_recv(sock, buf, n=0, *a):  # ~0.1 MB/s for 4 MiB: far longer than the 1 s idle timeout in total
        time.sleep(0.02)
        return real_recv(sock, buf, min(n or len(buf), 64 << 10), *a)

    socket.socket.recv_into = slow_recv
    try:
        got = client.fetch(info)
    finally:
        socket.socket.recv_into = real_recv
    assert client.last_path == "bulk" and torch.equal(got["w"], big["w"])

    def cut(conn):  # the bulk port dies half-way through a transfer
        with conn:
            conn.recv(64)
            conn.sendall(struct.pack(">Q", len(store.get(1).blob)) + bytes(1000))

    server.bulk._send = cut
    got = client.fetch(info)
    assert client.last_path == "stream" and torch.equal(got["w"], big["w"])
    client.close()


def test_publishing_copies_once_then_announces_off_the_callers_thread(service):
    store, _ = service
    state = _state(1)
    announced = []
    store.publish(1, state, wait=False, on_published=announced.append)
    for t in state.values():
        t.zero_()  # the caller may change its tensors as soon as publish returns
    store.publish(2, _state(2), wait=False, on_published=announced.append)
    store.flush()
    assert announced == [1, 2]
    blob_v1 = store.get(1)
    assert blob_v1 is None or torch.equal(W.view_tensor(blob_v1.blob, *_where(blob_v1, "step")), _state(1)["step"])
    assert store.latest().number == 2


def _where(version, name):
    t = next(t for t in version.tensors if t.name == name)
    return t.offset, t.nbytes, t.dtype, t.shape

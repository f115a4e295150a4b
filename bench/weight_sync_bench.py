"""Weight-sync throughput over loopback gRPC against raw loopback TCP, in one run.

    .venv/bin/python bench/weight_sync_bench.py --params 1.5e9

The state dict is shaped like a 1.5B-parameter model in bf16 (tensors of up to 64 M elements).
gRPC: WeightStore.publish is done before timing; the timed part is WeightClient.fetch (stream of
4 MiB chunks, sha256 per tensor, reassembly into tensors). Raw TCP: one socket, the same bytes
sent in 4 MiB writes into a pre-allocated buffer, nothing verified. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time

import torch


def make_state(params: float) -> dict[str, torch.Tensor]:
    out, left, k = {}, int(params), 0
    while left > 0:
        n = min(left, 64 << 20)
        out[f"model.layers.{k}.weight"] = torch.empty(n, dtype=torch.bfloat16).normal_()
        left -= n
        k += 1
    return out


def raw_tcp_seconds(payload: memoryview, chunk: int = 4 << 20) -> float:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def send() -> None:
        conn, _ = srv.accept()
        with conn:
            for off in range(0, len(payload), chunk):
                conn.sendall(payload[off : off + chunk])

    t = threading.Thread(target=send)
    t.start()
    buf = bytearray(len(payload))
    view = memoryview(buf)
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as c:
        got = 0
        while got < len(buf):
            n = c.recv_into(view[got:], min(chunk, len(buf) - got))
            if n == 0:
                break
            got += n
    dt = time.perf_counter() - t0
    t.join()
    srv.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=1.5e9)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from autothink.weights import WeightClient, WeightStore, serve, tensor_bytes

    state = make_state(args.params)
    total = sum(t.numel() * t.element_size() for t in state.values())
    store = WeightStore(keep=1)
    store.publish(1, state)
    server = serve(store, "127.0.0.1:0")
    client = WeightClient(f"127.0.0.1:{server.port}")
    info = next(client.watch(timeout_s=30))
    bulk_s, grpc_s, tcp_s = [], [], []
    payload = memoryview(b"".join(tensor_bytes(t) for t in state.values()))
    del state
    for _ in range(args.repeats):
        tcp_s.append(raw_tcp_seconds(payload))
        t0 = time.perf_counter()
        got = client.fetch(info)  # manifest over gRPC, bytes over the bulk port, xxh3 per tensor
        bulk_s.append(time.perf_counter() - t0)
        assert client.last_path == "bulk"
        del got
        t0 = time.perf_counter()
        got = client._fetch_stream(info)  # everything over the gRPC chunk stream, sha256 per tensor
        grpc_s.append(time.perf_counter() - t0)
        del got
    server.stop(0)
    b, g, r = statistics.median(bulk_s), statistics.median(grpc_s), statistics.median(tcp_s)
    print(json.dumps({
        "bytes": total, "repeats": args.repeats,
        "bulk_gb_per_s": round(total / b / 1e9, 3), "grpc_gb_per_s": round(total / g / 1e9, 3),
        "raw_tcp_gb_per_s": round(total / r / 1e9, 3),
        "ratio": round(r / b, 3), "stream_ratio": round(r / g, 3),
        "first_bulk_gb_per_s": round(total / bulk_s[0] / 1e9, 3),  # a fresh 3 GB buffer: ~1 s of page zeroing
        "bulk_s": [round(x, 3) for x in bulk_s], "grpc_s": [round(x, 3) for x in grpc_s], "raw_tcp_s": [round(x, 3) for x in tcp_s],
    }))


if __name__ == "__main__":
    main()

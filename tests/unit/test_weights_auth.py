"""Issue #39, M3 and M4, on the weight service over real gRPC on loopback: no open service, one
token entry compared in constant time, and a follower whose token is refused says so for good."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch

from autothink import weights as W
from autothink.v1 import weights_pb2 as pb


def _state() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}


def _wait(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.mark.parametrize("bind", ["0.0.0.0:0", "[::]:0", ":0"])
def test_an_open_bind_without_a_token_is_refused(bind):
    """M4: serve(store, "0.0.0.0:P", token="") started and served FetchManifest to anyone."""
    with pytest.raises(ValueError, match="without a token"):
        W.serve(W.WeightStore(), bind, token="")


def test_open_binds_serve_with_a_token_or_when_the_risk_is_accepted():
    for kw in ({"token": "t"}, {"token": "", "allow_no_token": True}):
        server = W.serve(W.WeightStore(), "0.0.0.0:0", bulk=False, **kw)
        server.stop(0)


def test_loopback_rule_is_the_gateways():
    """One rule for every listening service (autothink.config.is_loopback): the weight service,
    the gateway and the reward service all use it."""
    import services.gateway.config as G
    import services.reward.config as R
    from autothink.config import is_loopback

    assert W.is_loopback is G.is_loopback is R.is_loopback is is_loopback
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "0.0.0.0", "::", "10.1.2.3", "example.org"):
        assert is_loopback(host) == (host in ("127.0.0.1", "127.0.0.2", "localhost", "::1")), host


@pytest.fixture
def service():
    store = W.WeightStore()
    store.publish(1, _state())
    server = W.serve(store, "127.0.0.1:0", token="s3cret")
    yield store, server, f"127.0.0.1:{server.port}"
    server.stop(0)


def test_duplicate_authorization_metadata_is_refused(service):
    """With two entries the last one used to win (a dict of the metadata)."""
    _, _, addr = service
    channel = grpc.insecure_channel(addr)
    from autothink.v1 import weights_pb2_grpc as pb_grpc

    stub = pb_grpc.WeightServiceStub(channel)
    good = ("authorization", "Bearer s3cret")
    assert stub.FetchManifest(pb.FetchRequest(policy_version=1), metadata=(good,), timeout=10).policy_version == 1
    for metadata in ((("authorization", "Bearer wrong"), good), (good, ("authorization", "Bearer wrong")), (good, good)):
        with pytest.raises(grpc.RpcError) as e:
            stub.FetchManifest(pb.FetchRequest(policy_version=1), metadata=metadata, timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        with pytest.raises(grpc.RpcError) as e:
            next(stub.WatchVersions(pb.WatchRequest(after_version=0), metadata=metadata, timeout=10))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel.close()


def test_tokens_are_compared_in_constant_time(monkeypatch):
    seen = []
    real = W.hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(W.hmac, "compare_digest", spy)
    auth = W._TokenAuth("s3cret")
    assert auth.allowed((("authorization", "Bearer s3cret"),)) and not auth.allowed((("authorization", "Bearer s3cre"),))
    assert seen == [(b"Bearer s3cret", b"Bearer s3cret"), (b"Bearer s3cre", b"Bearer s3cret")]


def test_check_token(service):
    _, _, addr = service
    assert W.WeightClient(addr, token="s3cret").check_token() is True
    for token in ("wrong", ""):
        with pytest.raises(W.WeightAuthError, match="refused the token"):
            W.WeightClient(addr, token=token).check_token()
    closed = W.WeightClient("127.0.0.1:1", token="s3cret")
    assert closed.check_token(timeout_s=2) is False  # nothing listens: unknown, not refused


def test_a_follower_with_a_refused_token_stops_and_says_so(service):
    """M3: a wrong token gave one warning, then retries for ever while status said healthy: true."""
    _, _, addr = service
    applied = []
    follower = W.WeightFollower(W.WeightClient(addr, token="wrong"), lambda v, t: applied.append(v)).start()
    try:
        assert _wait(lambda: follower.fatal is not None)
        status = follower.status()
        assert status["healthy"] is False and status["fatal"] is True and status["failures"] >= 1
        assert "UNAUTHENTICATED" in status["last_error"] and "refused the token" in status["last_error"]
        assert _wait(lambda: not follower._thread.is_alive())  # no retry loop left behind
        assert applied == [] and follower.version == 0
    finally:
        follower.stop()


def test_a_follower_whose_service_later_changes_token_turns_unhealthy():
    """The learner restarted with another token: the follower had it right, then is refused."""
    store = W.WeightStore()
    server = W.serve(store, "127.0.0.1:0", token="old", bulk=False)
    port = server.port
    applied = []
    got = threading.Event()
    follower = W.WeightFollower(W.WeightClient(f"127.0.0.1:{port}", token="old"),
                                lambda v, t: (applied.append(v), got.set())).start()
    try:
        store.publish(1, _state())
        assert got.wait(20) and follower.healthy
        server.stop(0)
        again = W.WeightStore()
        again.publish(2, _state())
        server = W.serve(again, f"127.0.0.1:{port}", token="new", bulk=False)
        assert _wait(lambda: follower.fatal is not None, timeout=30)
        assert not follower.healthy and follower.version == 1 and applied == [1]
    finally:
        follower.stop()
        server.stop(0)

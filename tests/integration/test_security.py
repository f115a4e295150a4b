"""Each secret is enforced by the real component: Redis refuses a bus without its password, and the
services stop at start-up with a clear error instead of running half-connected."""

from __future__ import annotations

import pytest
import redis as redis_lib

from autothink.bus.messages import PromptMsg
from autothink.bus.streams import RedisBus
from tests.conftest import RedisServer, ServiceProcess, free_port

pytestmark = pytest.mark.slow


def test_redis_password_is_required(tmp_path):
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    try:
        good = RedisBus(server.url, "sec")
        good.publish(good.names.prompts, PromptMsg("g", "q"))
        assert good.length(good.names.prompts) == 1
        for url in (f"redis://127.0.0.1:{server.port}/0", f"redis://:wrong@127.0.0.1:{server.port}/0"):
            bad = RedisBus(url, "sec")
            with pytest.raises(redis_lib.exceptions.AuthenticationError):
                bad.client.xlen(bad.names.prompts)
    finally:
        server.stop()


def test_service_without_the_password_stops_with_a_clear_error(tmp_path):
    import httpx

    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    port = free_port()
    proc = ServiceProcess("services.reward", {
        "AUTOTHINK_REWARD_REDIS__URL": f"redis://127.0.0.1:{server.port}/0", "AUTOTHINK_REWARD_PORT": str(port),
        "AUTOTHINK_REWARD_GRADER_WORKERS": "1"}, tmp_path / "reward.log")
    try:
        import time

        deadline = time.time() + 20
        healthy = False
        while time.time() < deadline and proc.proc.poll() is None:
            try:
                healthy = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                pass
            if healthy:
                break
            time.sleep(0.3)
        assert not healthy and proc.proc.wait(30) != 0  # it stops instead of retrying a wrong password
        assert "redis refused the credentials" in proc.output()
    finally:
        proc.stop()
        server.stop()

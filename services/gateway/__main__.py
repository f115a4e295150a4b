"""`python -m services.gateway` (also `autothink gateway`): serve the adaptive-thinking model."""

from __future__ import annotations

import argparse
import logging
import sys

#: command-line flags and the settings they override
FLAGS = {
    "--model": ("model", str, "local Hugging Face folder to serve"),
    "--host": ("host", str, "address to bind (a non-loopback address needs --api-key or --allow-no-key)"),
    "--port": ("port", int, "port to bind"),
    "--api-key": ("api_key", str, "require Authorization: Bearer KEY on /generate, /v1 and /docs; visible to every user in "
                  "`ps`: prefer AUTOTHINK_GATEWAY_API_KEY or --api-key-file"),
    "--served-model-name": ("served_model_name", str, "model id shown by /v1/models"),
    "--max-concurrency": ("max_concurrency", int, "requests in flight before answering 429"),
    "--max-model-len": ("max_model_len", int, "context length of the engine"),
    "--follow": ("follow_weights", str, "address of the learner's weight service to hot-swap new versions from"),
}


def _add_args(parser: argparse.ArgumentParser) -> None:
    for flag, (_, typ, help_) in FLAGS.items():
        parser.add_argument(flag, type=typ, help=help_)
    parser.add_argument("--api-key-file", metavar="PATH", help="read the API key from this file (kept out of `ps`)")
    parser.add_argument("--follow-token", help="token for the weight service (with --follow); visible in `ps`: prefer "
                        "AUTOTHINK_GATEWAY_FOLLOW_WEIGHTS__TOKEN or --follow-token-file")
    parser.add_argument("--follow-token-file", metavar="PATH", help="read the weight service's token from this file")
    parser.add_argument("--allow-no-key", action="store_true", help="serve a non-loopback address without an API key")


def _secret_file(path: str, what: str) -> str:
    from autothink.config import ConfigError

    try:
        value = open(path, encoding="utf-8").read().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} from {path}: {e.strerror}") from None
    if not value:
        raise ConfigError(f"{path} holds no {what}")
    return value


def _with_flags(cfg, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from autothink.config import ConfigError
    from services.gateway.config import GatewayConfig

    data = cfg.model_dump()
    for flag, (key, _, _) in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            data[key] = value
    if args.api_key_file:
        data["api_key"] = _secret_file(args.api_key_file, "API key")
    if isinstance(data["follow_weights"], str):  # --follow: a token from the environment or a file still applies
        data["follow_weights"] = {"address": data["follow_weights"], "token": cfg.follow_weights.token if cfg.follow_weights else ""}
    token = _secret_file(args.follow_token_file, "weight token") if args.follow_token_file else args.follow_token
    if token is not None:
        if not data["follow_weights"]:
            raise ConfigError("--follow-token needs --follow HOST:PORT (or AUTOTHINK_GATEWAY_FOLLOW_WEIGHTS__ADDRESS)")
        data["follow_weights"] = {**data["follow_weights"], "token": token}
    if args.allow_no_key:
        data["allow_no_key"] = True
    try:
        return GatewayConfig.model_validate(data)
    except Exception as e:
        raise ConfigError(str(e)) from None


def refused_follow_token(cfg) -> str | None:  # type: ignore[no-untyped-def]
    """Why the weight service will never accept this gateway, or None: one call before the engine
    starts, so a wrong token stops the gateway with a clear message, as a wrong Redis password
    stops the other services (#39 M3).  A service that does not answer yet is fine: the follower
    waits for it, and turns /ready unhealthy if it refuses the token later."""
    from autothink.weights import WeightAuthError, WeightClient

    client = WeightClient(cfg.follow_weights.address, cfg.follow_weights.token)
    try:
        client.check_token(timeout_s=5.0)
    except WeightAuthError as e:
        return (f"{e} at {cfg.follow_weights.address}: set --follow-token-file, --follow-token or "
                "AUTOTHINK_GATEWAY_FOLLOW_WEIGHTS__TOKEN to the learner's weights.token")
    finally:
        client.close()
    return None


def main(argv: list[str] | None = None) -> int:
    from services._cli import configure_logging, service_settings
    from services.gateway.config import GatewayConfig, check_exposure

    resolved: list[GatewayConfig] = []

    flags: list[argparse.Namespace] = []

    def resolve(cfg: GatewayConfig, args: argparse.Namespace) -> dict:
        resolved.append(_with_flags(cfg, args))
        flags.append(args)
        return resolved[0].model_dump(mode="json")  # services._cli masks the secrets

    service_settings(
        "gateway",
        "Serve an adaptive-thinking R1-style model: POST /generate (modes auto / think / no_think, thinking budget, "
        "think probability) and an OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions), "
        "with /health, /ready and /metrics.",
        GatewayConfig, "AUTOTHINK_GATEWAY_", argv, add_args=_add_args, resolve=resolve,
    )
    cfg = resolved[0]
    if (why := check_exposure(cfg)) is not None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    configure_logging("gateway", flags[0])
    for flag, name in (("api_key", "AUTOTHINK_GATEWAY_API_KEY or --api-key-file"),
                       ("follow_token", "AUTOTHINK_GATEWAY_FOLLOW_WEIGHTS__TOKEN or --follow-token-file")):
        if getattr(flags[0], flag):
            logging.getLogger("autothink.gateway").warning(
                "--%s on the command line is visible to every user of this machine (ps); use %s", flag.replace("_", "-"), name)
    if cfg.follow_weights is not None and (why := refused_follow_token(cfg)) is not None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    import uvicorn

    from services.gateway.app import create_app
    from services.gateway.engine import VLLMEngine
    from services.gateway.server import protocol_with_header_timeout

    app = create_app(cfg, VLLMEngine(cfg))
    logging.getLogger("autothink.gateway").info(
        "serving %s as %r on http://%s:%d (API key %s)", cfg.model, cfg.served_model_name, cfg.host, cfg.port,
        "required" if cfg.api_key else "off",
    )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", log_config=None, timeout_graceful_shutdown=10,
                http=protocol_with_header_timeout(cfg.header_timeout_s, cfg.body_timeout_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
    "--api-key": ("api_key", str, "require Authorization: Bearer KEY on /generate and /v1"),
    "--served-model-name": ("served_model_name", str, "model id shown by /v1/models"),
    "--max-concurrency": ("max_concurrency", int, "requests in flight before answering 429"),
    "--max-model-len": ("max_model_len", int, "context length of the engine"),
    "--follow": ("follow_weights", str, "address of the learner's weight service to hot-swap new versions from"),
}


def _add_args(parser: argparse.ArgumentParser) -> None:
    for flag, (_, typ, help_) in FLAGS.items():
        parser.add_argument(flag, type=typ, help=help_)
    parser.add_argument("--follow-token", help="token for the weight service (with --follow)")
    parser.add_argument("--allow-no-key", action="store_true", help="serve a non-loopback address without an API key")


def _with_flags(cfg, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from autothink.config import ConfigError
    from services.gateway.config import GatewayConfig

    data = cfg.model_dump()
    for flag, (key, _, _) in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            data[key] = value
    if isinstance(data["follow_weights"], str):
        data["follow_weights"] = {"address": data["follow_weights"], "token": args.follow_token or ""}
    if args.allow_no_key:
        data["allow_no_key"] = True
    try:
        return GatewayConfig.model_validate(data)
    except Exception as e:
        raise ConfigError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    from services._cli import service_settings
    from services.gateway.config import GatewayConfig, check_exposure

    resolved: list[GatewayConfig] = []

    def resolve(cfg: GatewayConfig, args: argparse.Namespace) -> dict:
        resolved.append(_with_flags(cfg, args))
        shown = resolved[0].model_dump(mode="json")
        shown["api_key"] = "***" if shown["api_key"] else ""
        return shown

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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(message)s")
    import uvicorn

    from services.gateway.app import create_app
    from services.gateway.engine import VLLMEngine
    from services.gateway.server import protocol_with_header_timeout

    app = create_app(cfg, VLLMEngine(cfg))
    logging.getLogger("autothink.gateway").info(
        "serving %s as %r on http://%s:%d (API key %s)", cfg.model, cfg.served_model_name, cfg.host, cfg.port,
        "required" if cfg.api_key else "off",
    )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=10,
                http=protocol_with_header_timeout(cfg.header_timeout_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())

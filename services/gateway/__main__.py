"""`python -m services.gateway`: the gateway (its server lands with the gateway issue)."""

import sys

from services._cli import service_settings
from services.gateway.config import GatewayConfig

if __name__ == "__main__":
    service_settings("gateway", "The gateway: POST /generate and an OpenAI-compatible API.", GatewayConfig, "AUTOTHINK_GATEWAY_")
    print("gateway: settings valid, but the server is not implemented yet.", file=sys.stderr)
    sys.exit(3)

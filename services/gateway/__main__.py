"""`python -m services.gateway`: the gateway service."""

import sys

from services._skeleton import run_skeleton
from services.gateway.config import GatewayConfig

if __name__ == "__main__":
    sys.exit(run_skeleton("gateway", GatewayConfig, "AUTOTHINK_GATEWAY_", issue=7))

"""`python -m services.rollout`: the rollout service."""

import sys

from services._skeleton import run_skeleton
from services.rollout.config import RolloutServiceConfig

if __name__ == "__main__":
    sys.exit(run_skeleton("rollout", RolloutServiceConfig, "AUTOTHINK_ROLLOUT_", issue=5))

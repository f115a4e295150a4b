"""`python -m services.reward`: the reward service."""

import sys

from services._skeleton import run_skeleton
from services.reward.config import RewardServiceConfig

if __name__ == "__main__":
    sys.exit(run_skeleton("reward", RewardServiceConfig, "AUTOTHINK_REWARD_", issue=4))

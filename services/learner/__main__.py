"""`python -m services.learner`: the learner service."""

import sys

from services._skeleton import run_skeleton
from services.learner.config import LearnerServiceConfig

if __name__ == "__main__":
    sys.exit(run_skeleton("learner", LearnerServiceConfig, "AUTOTHINK_LEARNER_", issue=6))

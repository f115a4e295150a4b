"""`python -m services.learner`: the GRPO learner (one process, or N under torchrun)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.learner",
        description=(
            "Run the AutoThink stages: feed prompts, train on scored groups with DeepSpeed, publish weights. "
            "The experiment is a YAML file or preset (AUTOTHINK_* overrides apply); the learner's own settings "
            "come from --config FILE and AUTOTHINK_LEARNER_* (e.g. AUTOTHINK_LEARNER_EXPERIMENT, "
            "AUTOTHINK_LEARNER_RUN_ID, AUTOTHINK_LEARNER_RESUME=true). Multi-process: torchrun --nproc_per_node N -m services.learner"
        ),
    )
    parser.add_argument("--config", help="YAML file with the learner's settings")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in the output folder")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    args = parser.parse_args(argv)

    from autothink.config import ConfigError, load_config, load_section
    from services.learner.config import LearnerServiceConfig

    try:
        svc = load_section(LearnerServiceConfig, "AUTOTHINK_LEARNER_", args.config)
        if args.resume:
            svc = svc.model_copy(update={"resume": True})
        run = load_config(svc.experiment)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps({"learner": svc.model_dump(mode="json"), "experiment": run.model_dump(mode="json")}, indent=2))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s learner %(levelname)s %(message)s")
    from prometheus_client import CollectorRegistry

    from services._http import ops_app, serve_in_thread
    from services.learner.worker import Learner

    registry = CollectorRegistry()
    learner = Learner(run, svc, registry)
    server = None
    if learner.rank == 0:
        server = serve_in_thread(
            ops_app("AutoThink learner", lambda: (True, {"step": learner.state["step"], "policy_version": learner.state["policy_version"]}), registry),
            svc.host, svc.metrics_port,
        )
    try:
        learner.run(svc.max_steps)
    finally:
        learner.close()
        if server is not None:
            server.should_exit = True
    return 0


if __name__ == "__main__":
    sys.exit(main())

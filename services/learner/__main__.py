"""`python -m services.learner`: the GRPO learner (one process, or N under torchrun)."""

from __future__ import annotations

import logging
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    from autothink.config import RunConfig, load_config
    from services._cli import configure_logging, service_settings
    from services.learner.config import LearnerServiceConfig

    experiment: dict[str, RunConfig] = {}

    def with_experiment(svc: LearnerServiceConfig, args) -> dict:
        experiment["run"] = load_config(svc.experiment)  # a ConfigError here exits 2 like any other
        return {"learner": svc.model_dump(mode="json"), "experiment": experiment["run"].model_dump(mode="json")}

    svc, args = service_settings(
        "learner",
        "Run the AutoThink stages: feed prompts, train on scored groups with DeepSpeed, publish weights. The experiment "
        "is a YAML file or preset named by AUTOTHINK_LEARNER_EXPERIMENT (AUTOTHINK_* overrides apply). Multi-process: "
        "torchrun --nproc_per_node N -m services.learner.",
        LearnerServiceConfig, "AUTOTHINK_LEARNER_", argv,
        add_args=lambda p: p.add_argument("--resume", action="store_true", help="continue from the checkpoint in the output folder"),
        resolve=with_experiment,
    )
    if args.resume:
        svc = svc.model_copy(update={"resume": True})
    run = experiment["run"]

    configure_logging("learner", args)
    from prometheus_client import CollectorRegistry

    from services._http import ops_app, serve_in_thread
    from services.learner.worker import Learner

    registry = CollectorRegistry()
    learner = Learner(run, svc, registry)
    server = None
    finished = threading.Event()
    if learner.rank == 0:
        from services.learner.dashboard import add_dashboard, learner_data

        app = ops_app("AutoThink learner", lambda: (True, {
            "step": learner.state["step"], "steps": len(learner.steps), "policy_version": learner.state["policy_version"],
            "finished": finished.is_set()}), registry)
        add_dashboard(app, lambda: learner_data(learner, finished.is_set()))  # GET /dashboard: the live page
        server = serve_in_thread(app, svc.host, svc.metrics_port)
    from services.learner.worker import EXIT_STOPPED, TrainingStopped

    try:
        try:
            learner.run(svc.max_steps)
        except TrainingStopped as e:
            logging.getLogger("autothink.learner").error("training stopped: %s", e)
            return EXIT_STOPPED
        learner.trainer.close()  # every rank finished the schedule: leave the process group together
        finished.set()
        if svc.serve_after_finish and learner.rank == 0:
            logging.getLogger("autothink.learner").info(
                "schedule finished at step %d; serving policy version %d until stopped", learner.state["step"], learner.state["policy_version"])
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            stop.wait()
    finally:
        learner.close()
        if server is not None:
            server.should_exit = True
    return 0


if __name__ == "__main__":
    sys.exit(main())

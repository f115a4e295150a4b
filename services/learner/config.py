"""Settings of the learner process (environment prefix AUTOTHINK_LEARNER_).

The experiment itself (model, stages, optimiser) is a :class:`autothink.config.RunConfig`."""

from __future__ import annotations

from pydantic import Field

from autothink.config import Strict


class LearnerServiceConfig(Strict):
    experiment: str = Field("toy", description="Experiment YAML file or preset name.")
    run_id: str = Field("default", description="Namespace of the run's streams.")
    resume: bool = Field(False, description="Continue from the latest checkpoint in the output folder.")
    weights_bind: str = Field("127.0.0.1:50051", description="Where the weight service listens.")
    checkpoint_every: int = Field(10, ge=0, description="Steps between checkpoints (0: only at the end).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (the schedule's total otherwise).")
    save_stage_models: bool = Field(True, description="Write a Hugging Face folder at the end of each stage (output_dir/stages/NAME).")
    serve_after_finish: bool = Field(False, description="After the last step keep serving the final weights until stopped.")
    host: str = "127.0.0.1"
    metrics_port: int = Field(8003, ge=0, le=65535)

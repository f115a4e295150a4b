"""vLLM worker extension: swaps new weights into the running engine.

vLLM refuses ``collective_rpc`` with a plain function unless insecure serialization is allowed,
so the engine is started with ``worker_extension_cls`` pointing here and the rollout service
calls the method by name.  Tensors travel as a safetensors file (on /dev/shm where it exists)
rather than through the RPC channel.
"""

from __future__ import annotations

from autothink.first_step import FirstStepExtension


class WeightSyncExtension(FirstStepExtension):
    """Mixed into vLLM's worker class; ``self.model_runner`` is the worker's model runner.  It also
    hands the gateway the first-step probabilities (:mod:`autothink.first_step`)."""

    def load_weights_from_file(self, path: str) -> int:
        from safetensors.torch import load_file

        weights = load_file(path)
        runner = self.model_runner  # type: ignore[attr-defined]
        dtype = getattr(getattr(runner, "model_config", None), "dtype", None)
        if dtype is not None:  # the learner's fp32 weights into a bf16 engine: cast here, not per parameter
            weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
        if hasattr(runner, "reload_weights"):
            # model.load_weights, then the same post-processing as at start-up: the CPU backend
            # repacks linear weights into kernel layouts, so a bare load_weights would meet
            # parameters that are already converted
            runner.reload_weights(weights_iterator=iter(weights.items()), is_checkpoint_format=True)
        else:
            runner.get_model().load_weights(weights=iter(weights.items()))
        return len(weights)

"""The AutoThink processes, one package each (docs/design.md §4):

rollout  - vLLM generates groups of samples for prompts read off a Redis stream
reward   - a stateless grader scores them
learner  - DeepSpeed runs GRPO over scored groups and publishes new weights over gRPC
gateway  - FastAPI serves the adaptive model (POST /generate, OpenAI-compatible API)
"""

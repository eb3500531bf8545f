"""The engines that run generation behind the `Engine` contract (generation/engine.py): local
(one request at a time, openvino-genai), batching (continuous batching for the server), remote
(an OpenAI-compatible server) and the streaming they share."""

# How a frozen bundle starts itself as the batching engine's model process (cli.main's
# CHILDREN); here rather than in batching.py, so the CLI can name it without loading OpenVINO.
BATCHING_CHILD_FLAG = "--batching-child"

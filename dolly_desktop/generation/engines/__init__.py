"""The engines that run generation behind the `Engine` contract (generation/engine.py): local
(one request at a time, openvino-genai), batching (continuous batching for the server), remote
(an OpenAI-compatible server) and the streaming they share."""

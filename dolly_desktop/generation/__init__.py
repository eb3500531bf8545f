"""An instruction in, text out: Dolly's prompt template, sampling parameters, the engine
contract (engine), the local OpenVINO engine (local), the remote OpenAI-HTTP engine (remote),
stream text cleaning (text), metrics wording, devices and memory handling.

May import: models and the basics. openvino/openvino_genai only in local, devices and memory;
the contract, remote, prompt, params and text load neither OpenVINO nor an HTTP server.
"""

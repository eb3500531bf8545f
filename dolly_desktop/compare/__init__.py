"""Compare variants of a model (or two models) on the same instruction: agreement measured
teacher-forced against a reference (agreement), the built-in prompt set of `models check`
(prompts), and the one-after-another runs of `dolly-desktop compare` with speed and memory
(runs).

Sits between history and documents: it may use generation (the engine, the prompt template),
models (the store, capacity, the stored check result) and the basics. openvino for the logits
of the plain runtime; no Qt, no server framework, no torch.
"""

"""`dolly-desktop serve`: the OpenAI-compatible HTTP API (Starlette + uvicorn) over an engine.

May import: history, generation, models and the basics. Not ui or cli.
"""

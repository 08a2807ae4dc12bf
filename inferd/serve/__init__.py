"""The OpenAI-compatible HTTP server: `build_app` over AsyncEngines, and `inferd serve`.

Routes translate between OpenAI's shapes and the engine (openai.py, protocol.py, translate.py);
auth, errors, metrics and graceful shutdown each have their own module.
"""

"""Loopback stand-ins of the remote services, for tests and for trying a configuration for free.

``python -m geolocsft.testing.standin`` serves the Gemini (and OpenAI-compatible) API and
``python -m geolocsft.testing.hub_standin`` the Hugging Face Hub on 127.0.0.1. They speak the real
wire protocols, so the real clients (google-genai, openai, huggingface_hub) talk to them
unchanged. The pipeline modules never import this package.
"""

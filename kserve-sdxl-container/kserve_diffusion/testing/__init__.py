"""Tiny random-weight pipelines (real diffusers classes) for tests and the demo, and checkpoint export."""

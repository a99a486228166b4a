"""The OpenAI-compatible routes under /openai/v1 (KServe's OpenAI prefix)."""

"""Protocol adapters around the GenerationService: KServe v1/v2 (REST, gRPC), OpenAI routes, ASGI middleware."""

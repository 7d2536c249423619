"""Test support: real loopback servers (`servers.serve_asgi`) and the fake upstream
(`fake_openrouter.FakeOpenRouter`)."""

"""The demo: a small multi-agent task, the project's "hello world" (`ravi demo`)."""

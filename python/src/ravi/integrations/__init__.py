"""Integrations of ravi with other systems: the networked and durable runtimes."""

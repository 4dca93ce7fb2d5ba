"""Helpers for testing agents and runtimes, the same ones ravi's own tests use."""

from ravi.testing._conformance import ConformanceAgent, conformance_setup
from ravi.testing._counter import CounterAgent, counter_setup
from ravi.testing._helpers import eventually
from ravi.testing._jaeger import Jaeger, running_jaeger
from ravi.testing._postgres import PostgresServer, running_postgres
from ravi.testing._processes import NodeProcess, ravi_command, running_node, start_node
from ravi.testing._restate import RestateServer, running_restate

__all__ = [
    "ConformanceAgent",
    "CounterAgent",
    "Jaeger",
    "NodeProcess",
    "PostgresServer",
    "RestateServer",
    "conformance_setup",
    "counter_setup",
    "eventually",
    "ravi_command",
    "running_jaeger",
    "running_node",
    "running_postgres",
    "running_restate",
    "start_node",
]

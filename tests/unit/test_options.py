"""ravi node's flags and TOML keys are the fields of its options dataclasses, one name each."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from ravi._mesh_cli import NodeConfig, UsageError
from ravi.integrations.runtime.grpc import GrpcRuntimeOptions
from ravi.mesh.v1 import contract
from ravi.testing import ravi_command

FIELDS = [
    f.name
    for cls in (NodeConfig, GrpcRuntimeOptions)
    for f in dataclasses.fields(cls)
    if f.name != "options"
]


def test_every_field_is_a_flag_of_ravi_node() -> None:
    result = subprocess.run(
        [*ravi_command(), "node", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    for name in FIELDS:
        assert f"--{name.replace('_', '-')}" in result.stdout, name


def test_defaults_are_the_contracts_shared_ones() -> None:
    options = GrpcRuntimeOptions()
    assert options.default_timeout == contract.DEFAULT_TIMEOUT_SECONDS == 60
    assert options.mailbox_capacity == contract.DEFAULT_MAILBOX_CAPACITY == 10_000
    assert options.max_message_bytes == contract.DEFAULT_MAX_MESSAGE_BYTES
    assert options.grace_period == contract.DEFAULT_GRACE_PERIOD_SECONDS


def test_toml_keys_are_field_names_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        'listen = "127.0.0.1:7001"\n'
        "default_timeout = 30\n"
        'tls_cert = "server.pem"\n'
        'setup = ["app:one"]\n'
        '[peer]\nnode-b = "127.0.0.1:7002"\n'
    )
    given = {"default_timeout": 5.0, "peer": ["node-c=127.0.0.1:7003"], "setup": ["app:two"]}
    node = NodeConfig.load(config, given)
    assert node.listen == "127.0.0.1:7001"
    assert node.peer == {"node-b": "127.0.0.1:7002", "node-c": "127.0.0.1:7003"}
    assert node.setup == ["app:one", "app:two"]
    assert node.options.default_timeout == 5.0
    assert node.options.tls_cert == Path("server.pem")
    assert node.options.mailbox_capacity == contract.DEFAULT_MAILBOX_CAPACITY


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "peers = {a = 'x:1'}\n",
            'unknown key "peers" \\(did you mean "peer"\\?\\); the keys are: ',
        ),
        ("default_timeout = 'soon'\n", "default_timeout must be a float"),
        ("mailbox_capacity = 0\n", "mailbox_capacity must be at least 1"),
        ("peer = ['x']\n", "peer must be NAME=VALUE, got 'x'"),
        ("peer = 3\n", 'peer must be a table of strings .* or an array of "NAME=VALUE"'),
        ("listen = \n", "cannot read"),
    ],
)
def test_a_bad_config_is_one_clear_error(tmp_path: Path, text: str, error: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text(text)
    with pytest.raises(UsageError, match=error):
        NodeConfig.load(config, {})


def test_repeatable_flags_are_tables_or_arrays_like_the_flags(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('peer = ["b=127.0.0.1:1", "c=127.0.0.1:2"]\nagent = { w = "m:W" }\n')
    node = NodeConfig.load(config, {})
    assert node.peer == {"b": "127.0.0.1:1", "c": "127.0.0.1:2"}
    assert node.agent == {"w": "m:W"}


def test_a_bad_flag_value_is_one_clear_error() -> None:
    with pytest.raises(UsageError, match="--peer must be NAME=VALUE"):
        NodeConfig.load(None, {"peer": ["no-equals-sign"]})


def test_keys_are_spelt_like_the_flags_or_like_the_fields(tmp_path: Path) -> None:
    """docs/scaling-out.md: each flag is a key of the same name, with dashes or underscores."""
    config = tmp_path / "node.toml"
    config.write_text(
        'node-id = "node-a"\n'
        "default-timeout = 30\n"
        "wait_for_peers = 2\n"
        '[peer]\nnode-b = "127.0.0.1:7002"\n'
        '[agent]\nwriter = "myapp.agents:WriterAgent"\n'
    )
    node = NodeConfig.load(config, {})
    assert node.options.node_id == "node-a"
    assert node.options.default_timeout == 30.0
    assert node.wait_for_peers == 2.0
    assert node.peer == {"node-b": "127.0.0.1:7002"}
    assert node.agent == {"writer": "myapp.agents:WriterAgent"}


def test_an_unknown_key_lists_the_keys_and_the_nearest(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('node-idd = "a"\n')
    with pytest.raises(UsageError) as raised:
        NodeConfig.load(config, {})
    message = str(raised.value)
    assert 'unknown key "node-idd" (did you mean "node-id"?)' in message
    for name in FIELDS:
        assert name.replace("_", "-") in message.partition("the keys are: ")[2], name


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('node-id = "a"\nnode_id = "b"\n')
    with pytest.raises(UsageError, match="given twice"):
        NodeConfig.load(config, {})

"""``streamproc kcl``'s own logic: the daemon's properties, the child command, exit statuses."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pytest

from streamproc.config import AwsConfig, Config, KclConfig, SourceConfig
from streamproc.errors import ConfigError
from streamproc.kcl import child_command, exit_status, find_jars, properties


def parse(text: str) -> dict[str, str]:
    pairs = (line.split(" = ", 1) for line in text.splitlines() if line and line[0] != "#")
    return dict(pairs)


def test_properties_carry_every_setting_under_the_keys_the_daemon_reads() -> None:
    config = Config(
        aws=AwsConfig(
            region="eu-west-1",
            endpoint_url="http://127.0.0.1:5000",
            kinesis_endpoint_url="http://127.0.0.1:4567",
        ),
        source=SourceConfig(stream="payments", start_position="LATEST"),
        kcl=KclConfig(application_name="fraud", failover_time_ms=4000, shutdown_grace_ms=15000),
    )
    props = parse(properties(config, config_path="/etc/streamproc.toml", worker="task-1"))
    assert props["streamName"] == "payments"
    assert props["applicationName"] == "fraud"
    assert props["workerId"] == "task-1"
    assert props["regionName"] == "eu-west-1"
    assert props["initialPositionInStream"] == "LATEST"
    assert props["failoverTimeMillis"] == "4000"
    assert props["shutdownGraceMillis"] == "15000"
    assert props["kinesisEndpoint"] == "http://127.0.0.1:4567"
    assert props["dynamoDBEndpoint"] == "http://127.0.0.1:5000"
    assert props["retrievalMode"] == "POLLING" and props["metricsLevel"] == "NONE"
    assert props["callProcessRecordsEvenForEmptyRecordList"] == "true"
    assert props["executableName"].endswith("-m connectors.kcl --config /etc/streamproc.toml")


def test_real_aws_gets_no_endpoint_keys() -> None:
    props = parse(properties(Config(), config_path=None, worker="w"))
    assert "kinesisEndpoint" not in props and "dynamoDBEndpoint" not in props


def test_at_timestamp_is_refused_with_the_alternative() -> None:
    config = dataclasses.replace(Config(), source=SourceConfig(start_position="AT_TIMESTAMP"))
    with pytest.raises(ConfigError, match="TRIM_HORIZON and LATEST"):
        properties(config, config_path=None, worker="w")


def test_a_path_with_a_space_cannot_be_part_of_the_child_command() -> None:
    with pytest.raises(ConfigError, match="splits its child command on spaces"):
        child_command("/srv/my configs/streamproc.toml")


def test_missing_jars_say_how_to_get_them(tmp_path: Path) -> None:
    config = Config(kcl=KclConfig(jars_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="tools/kcl/fetch-jars"):
        find_jars(config)


@pytest.mark.parametrize(
    ("status", "stop_requested", "expected"),
    [
        (143, True, 0),  # the JVM's exit after its SIGTERM shutdown hook
        (-int(signal.SIGTERM), True, 0),  # died of the forwarded SIGTERM itself
        (0, False, 0),
        (143, False, 143),  # a SIGTERM we did not send: not a clean stop of ours
        (1, True, 1),
        (-int(signal.SIGKILL), False, 137),
    ],
)
def test_exit_status(status: int, stop_requested: bool, expected: int) -> None:
    assert exit_status(status, stop_requested=stop_requested) == expected

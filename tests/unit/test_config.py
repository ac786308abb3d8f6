"""Configuration: defaults, the TOML file, environment overrides and the error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamproc.config import load_config
from streamproc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SINK_ON = {"STREAMPROC__SINKS__DYNAMODB__ENABLED": "true"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_sample_file_is_valid_and_documents_every_section() -> None:
    config = load_config(ROOT / "streamproc.sample.toml", env=SINK_ON)
    assert config.source.stream == "transactions"
    assert config.enabled_sinks() == ("dynamodb",)


def test_file_values_and_env_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[source]\nstream = "payments"\nmax_records_per_call = 500\n'
        '[sinks.sqs]\nenabled = true\nqueue_url = "https://q"\n',
    )
    env = {"STREAMPROC__SOURCE__MAX_RECORDS_PER_CALL": "250", "STREAMPROC__RULES__PATHS": "a, b"}
    config = load_config(path, env=env)
    assert config.source.stream == "payments"
    assert config.source.max_records_per_call == 250  # environment wins over the file
    assert config.rules.paths == ("a", "b")
    assert config.sinks.sqs.queue_url == "https://q"


@pytest.mark.parametrize(
    ("text", "env", "key", "fragment"),
    [
        ('[source]\nstart_position = "EARLIEST"\n', SINK_ON, "source.start_position",
         "expected one of TRIM_HORIZON, LATEST, AT_TIMESTAMP"),
        ("[source]\nmax_records_per_call = 20000\n", SINK_ON, "source.max_records_per_call",
         "between 1 and 10000"),
        ('[sourc]\nstream = "x"\n', SINK_ON, "sourc", "did you mean 'source'"),
        ("[limits]\nmax_record_bytes = \"big\"\n", SINK_ON, "limits.max_record_bytes",
         "expected an integer"),
        ("", {"STREAMPROC__SINKS__SQS__ENABLED": "maybe"}, "sinks.sqs.enabled", "true or false"),
        ("", {"STREAMPROC__SINKS__SQS__ENABLED": "1"}, "sinks.sqs.queue_url", "required"),
        ('[source]\nstart_position = "AT_TIMESTAMP"\n', SINK_ON, "source.start_timestamp",
         "required"),
        ('[source]\nstart_timestamp = "2026-01-01T00:00:00"\n', SINK_ON,
         "source.start_timestamp", "UTC offset"),
        ("", {}, "sinks", "no sink is enabled"),
    ],
)  # fmt: skip
def test_invalid_values_name_the_key_and_what_is_expected(
    tmp_path: Path, text: str, env: dict[str, str], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env)
    assert info.value.key == key
    assert fragment in str(info.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env=SINK_ON)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[source\n"), env=SINK_ON)

"""The command line as a user runs it: real processes, real exit codes, real output."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
STREAMPROC = [sys.executable, "-m", "streamproc.cli"]


def run(
    *args: str, cwd: Path = ROOT, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STREAMPROC, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_run_local_delivers_alerts_to_all_four_sinks_and_exits_cleanly(tmp_path: Path) -> None:
    """The README's main command, shortened: alerts must show up at every destination."""
    (tmp_path / "rules").symlink_to(ROOT / "rules")
    result = run("run", "--local", "--duration", "10", "--rate", "400", "--summary-interval", "2",
                 cwd=tmp_path, env={"STREAMPROC__METRICS__PORT": "0"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "every alert decided, final checkpoint written" in out
    checkpoints = re.search(r"checkpoints written\s+([\d,]+)", out)
    assert checkpoints is not None and int(checkpoints.group(1).replace(",", "")) > 0
    read = int(re.search(r"records read\s+([\d,]+)", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert read > 1000

    def number(text: str) -> int:
        return int(text.replace(",", ""))

    matches = {m[0]: number(m[1]) for m in re.findall(r"rule (\w+)\s+([\d,]+) matches", out)}
    assert matches.get("high_value_out_of_state", 0) > 0, out
    alerts = sum(matches.values())
    for sink in ("dynamodb", "eventbridge", "sns", "sqs"):
        assert re.search(rf"sink {sink}\s+sent {alerts:,}\b", out), (sink, out)
    for where in ("eventbridge → inbox queue", "sqs fifo queue", "dynamodb table items"):
        found = re.search(rf"{re.escape(where)}\s+([\d,]+)", out)
        assert found is not None and number(found.group(1)) == alerts, (where, out)
    # the SNS subscription filters on severity: all HIGH/CRITICAL alerts and no MEDIUM one pass
    # it (the fraud model alerts above 0.8: HIGH or CRITICAL)
    high = (
        matches["high_value_out_of_state"]
        + matches.get("card_velocity", 0)
        + matches.get("fraud_score", 0)
    )
    found = re.search(r"sns → HIGH/CRITICAL inbox queue\s+([\d,]+)", out)
    assert found is not None and number(found.group(1)) == high, out
    assert "[" in out and "/s)" in out  # the live summary printed at least once


def test_rules_list_shows_the_shipped_rule() -> None:
    result = run("rules", "list", "rules")
    assert result.returncode == 0, result.stderr
    assert (
        "high_value_out_of_state v1  [HIGH]  amount > 2000 AND state <> home_state" in result.stdout
    )


def test_rules_loop_prints_the_generated_loop_and_what_its_names_stand_for() -> None:
    result = run("rules", "loop", "rules")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "# c0: condition of rule 'high_value_out_of_state'\n" in out
    assert "# h0: window rule 'card_velocity'\n" in out
    assert "def _loop(records, alerts, dead, matches):" in out
    # card_velocity's generated fast path is written into the loop, its names numbered
    assert "if event_ms < OP_h0._floor" in out and "results = NONE_h0 if out_h0" in out
    compile(out, "<loop>", "exec")  # the whole output is Python: legend in comments


def test_rules_check_reports_a_syntax_error_with_file_line_column(tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("from streamproc import rule\n\nx = rule(name='a', condition='amount > 1'\n")
    result = run("rules", "check", str(tmp_path))
    assert result.returncode == 1
    assert re.search(rf"{re.escape(str(bad))}:3:\d+: ", result.stderr), result.stderr


def test_rules_check_reports_a_bad_condition_inside_the_rule_file(tmp_path: Path) -> None:
    bad = tmp_path / "escape.py"
    bad.write_text(
        "from streamproc import rule\n\n"
        "x = rule(name='a', condition=\"amount > 1 AND __import__('os') IS NULL\")\n"
    )
    result = run("rules", "check", str(tmp_path))
    assert result.returncode == 1
    assert f"{bad}:3:" in result.stderr
    assert "__import__" in result.stderr or "function" in result.stderr.lower()


def test_invalid_configuration_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[source]\nstart_position = "EARLIEST"\n')
    result = run("run", "--config", str(config))
    assert result.returncode == 2
    assert "source.start_position" in result.stderr
    assert "TRIM_HORIZON" in result.stderr


def test_help_everywhere() -> None:
    for args in (["--help"], ["run", "--help"], ["produce", "--help"], ["rules", "list", "--help"]):
        result = run(*args)
        assert result.returncode == 0
        assert "usage: streamproc" in result.stdout


def test_produce_writes_seeded_transactions_to_a_stream(
    moto_endpoint: str, aws_client: Any, unique_name: str
) -> None:
    kinesis = aws_client("kinesis")
    kinesis.create_stream(StreamName=unique_name, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=unique_name, WaiterConfig={"Delay": 0.2})
    no_credentials = {
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
    }
    result = run("produce", "--stream", unique_name, "--endpoint-url", moto_endpoint,
                 "--count", "250", "--bad-every", "50", env=no_credentials)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"sent 250 transactions to {unique_name}" in result.stdout
    shard = kinesis.list_shards(StreamName=unique_name)["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(
        StreamName=unique_name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    data = [r["Data"] for r in kinesis.get_records(ShardIterator=iterator, Limit=1000)["Records"]]
    assert len(data) == 250
    assert sum(1 for d in data if d.startswith(b"{not json")) == 5
    assert orjson.loads(data[0])["tx_id"] == "tx-42-000000000"


def test_produce_to_an_unreachable_endpoint_says_so(unique_name: str) -> None:
    from streamproc.emulators import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = run("produce", "--stream", unique_name, "--endpoint-url", url, "--count", "5")
    assert result.returncode == 3
    assert f"cannot use stream '{unique_name}' at {url}" in result.stderr
    assert "Traceback" not in result.stderr


def test_ctrl_c_stops_cleanly_with_totals(tmp_path: Path) -> None:
    """SIGINT, as Ctrl-C sends it: drain, final checkpoint, totals, exit 0."""
    (tmp_path / "rules").symlink_to(ROOT / "rules")
    process = subprocess.Popen(
        [*STREAMPROC, "run", "--local", "--summary-interval", "1", "--rate", "300"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STREAMPROC__METRICS__PORT": "0"},
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    for line in process.stdout:  # wait for the first live summary line
        if "/s) | alerts" in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "every alert decided, final checkpoint written" in out
    assert "at the destinations" in out


def test_replay_writes_the_same_alerts_byte_for_byte_every_time(tmp_path: Path) -> None:
    from streamproc.demo import DemoSpec, encode, transactions

    events = tmp_path / "events.jsonl"
    lines = [encode(t)[0] for t in transactions(DemoSpec(seed=9), 20_000)]
    lines.insert(500, b"{broken")
    events.write_bytes(b"\n".join(lines) + b"\n")
    outputs = []
    for name in ("a.jsonl", "b.jsonl"):
        result = run("replay", "--rules", "rules", "--events", str(events),
                     "--output", str(tmp_path / name))  # fmt: skip
        assert result.returncode == 0, result.stderr
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    alerts = [orjson.loads(line) for line in outputs[0].splitlines()]
    rules = {a["rule"] for a in alerts}
    assert rules == {"high_value_out_of_state", "card_velocity", "hourly_spend", "fraud_score"}
    for alert in alerts:
        for key in ("alert_id", "rule", "rule_version", "key", "window_start", "window_end",
                    "event_time", "fields"):  # fmt: skip
            assert key in alert
        if alert["rule"] == "hourly_spend":
            assert alert["window_start"].endswith(":00:00.000Z")
            assert alert["fields"]["total"] > 10_000
    assert f"replayed 20,001 records: {len(alerts):,} alerts" in result.stderr
    assert "1 refused" in result.stderr
    assert "line 501: invalid JSON" in result.stderr


def test_rules_check_passes_on_the_shipped_rules() -> None:
    result = run("rules", "check", "rules")
    assert result.returncode == 0, result.stderr
    assert "ok: 4 rule(s) compiled from rules" in result.stdout


def test_rules_check_reports_a_bad_window_rule_in_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "windows.py"
    bad.write_text(
        "from streamproc import window_rule\n\n"
        "w = window_rule(\n"
        "    name='w',\n"
        '    sql="SELECT card_id FROM t WHERE COUNT(*) > 1 GROUP BY card_id, '
        "TUMBLE(event_time, INTERVAL '1' HOUR)\",\n"
        ")\n"
    )
    result = run("rules", "check", str(tmp_path))
    assert result.returncode == 1
    where = rf"{re.escape(str(bad))}:5:\d+: "
    assert re.search(where + r".*aggregate COUNT\(\*\) is not allowed in WHERE", result.stderr)

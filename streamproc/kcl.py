"""``streamproc kcl``: run the KCL MultiLangDaemon with our per-shard child (``connectors.kcl``).

Scale-out across ECS tasks is the Kinesis Client Library's job: its lease table in DynamoDB
assigns shards to workers, moves them when a worker dies or joins, and orders parent shards
before their children after a reshard. We run the real daemon (Java) and plug our runtime into it
as the child process it starts for each shard lease.

This module writes the daemon's properties file from the streamproc configuration, finds the
jars (``tools/kcl/fetch-jars`` resolves them with Maven), starts
``java -cp JARS/* software.amazon.kinesis.multilang.MultiLangDaemon`` with its logs on stderr,
and forwards SIGTERM/SIGINT to it so an ECS stop is a graceful hand-off: the daemon asks every
shard to drain and checkpoint (``shutdownGraceMillis``) and exits. Its exit status 143 after a
forwarded stop counts as a clean exit (0).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from streamproc.config import Config
from streamproc.errors import ConfigError

log = logging.getLogger(__name__)

KCL_VERSION = "3.1.3"
DAEMON_CLASS = "software.amazon.kinesis.multilang.MultiLangDaemon"
MULTILANG_JAR = f"amazon-kinesis-client-multilang-{KCL_VERSION}.jar"

# The daemon's own logback.xml logs to stdout; stdout is ours to keep clean, so: stderr.
# (No double hyphen inside XML comments: logback then rejects the whole file.)
LOGBACK_XML = """<configuration>
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder>
      <pattern>%d [%thread] %-5level %logger{36} - %msg%n</pattern>
    </encoder>
  </appender>
  <logger name="software.amazon.kinesis" level="${KCL_LOG_LEVEL:-INFO}"/>
  <root level="WARN">
    <appender-ref ref="STDERR"/>
  </root>
</configuration>
"""


@dataclass(frozen=True)
class DaemonFiles:
    properties: Path
    logback: Path


def worker_id(config: Config) -> str:
    return config.kcl.worker_id or f"{socket.gethostname()}-{os.getpid()}"


def child_command(config_path: str | None, python: str = sys.executable) -> str:
    """``executableName``: the daemon splits it on spaces, without any quoting."""
    parts = [python, "-m", "connectors.kcl"]
    if config_path is not None:
        parts += ["--config", str(Path(config_path).resolve())]
    for part in parts:
        if not part or any(c.isspace() for c in part):
            raise ConfigError(
                "kcl",
                f"the daemon splits its child command on spaces, so {part!r} cannot be part of "
                "it: install streamproc and its configuration under paths without spaces",
            )
    return " ".join(parts)


def properties(config: Config, *, config_path: str | None, worker: str) -> str:
    """The daemon's properties file for ``config``.

    The daemon silently ignores keys it does not know (a misspelt endpoint key means real AWS),
    so every key written here is one the KCL 3 MultiLangDaemon reads.
    """
    kcl = config.kcl
    if config.source.start_position == "AT_TIMESTAMP":
        raise ConfigError(
            "source.start_position",
            "streamproc kcl supports TRIM_HORIZON and LATEST (the daemon's "
            "initialPositionInStream); AT_TIMESTAMP works with streamproc run only",
        )
    lines = [
        "# Written by streamproc kcl from the streamproc configuration; do not edit.",
        f"executableName = {child_command(config_path)}",
        f"streamName = {config.source.stream}",
        f"applicationName = {kcl.application_name}",
        f"workerId = {worker}",
        f"regionName = {config.aws.region}",
        "AwsCredentialsProvider = DefaultCredentialsProvider",
        f"retrievalMode = {kcl.retrieval_mode}",
        f"initialPositionInStream = {config.source.start_position}",
        f"failoverTimeMillis = {kcl.failover_time_ms}",
        f"shutdownGraceMillis = {kcl.shutdown_grace_ms}",
        f"metricsLevel = {kcl.metrics_level}",
        f"shardSyncIntervalMillis = {kcl.shard_sync_interval_ms}",
        f"idleTimeBetweenReadsInMillis = {kcl.idle_time_between_reads_ms}",
        f"maxRecords = {kcl.max_records}",
        # Empty calls while the shard is quiet: idle windows close and checkpoints catch up.
        "callProcessRecordsEvenForEmptyRecordList = true",
    ]
    kinesis_endpoint = config.aws.kinesis_endpoint_url or config.aws.endpoint_url
    if kinesis_endpoint:
        lines.append(f"kinesisEndpoint = {kinesis_endpoint}")
    if config.aws.endpoint_url:
        lines.append(f"dynamoDBEndpoint = {config.aws.endpoint_url}")
    return "\n".join(lines) + "\n"


def find_jars(config: Config, env: dict[str, str] | None = None) -> Path:
    """The directory of the daemon's jars; a ConfigError that says how to get them."""
    env = dict(os.environ) if env is None else env
    configured = config.kcl.jars_dir or env.get("STREAMPROC_KCL_JARS", "")
    directory = Path(configured or Path.cwd() / ".cache" / "kcl-jars" / KCL_VERSION)
    if not (directory / MULTILANG_JAR).is_file():
        where = "kcl.jars_dir" if config.kcl.jars_dir else "STREAMPROC_KCL_JARS or kcl.jars_dir"
        raise ConfigError(
            "kcl.jars_dir",
            f"no KCL {KCL_VERSION} jars in {directory} ({MULTILANG_JAR} is missing): run "
            f"tools/kcl/fetch-jars (needs mvn and java), or set {where} to a directory "
            "holding them",
        )
    return directory


def write_files(config: Config, *, config_path: str | None, directory: Path) -> DaemonFiles:
    directory.mkdir(parents=True, exist_ok=True)
    props = directory / "streamproc-kcl.properties"
    props.write_text(
        properties(config, config_path=config_path, worker=worker_id(config)), encoding="utf-8"
    )
    logback = directory / "logback-stderr.xml"
    logback.write_text(LOGBACK_XML, encoding="utf-8")
    return DaemonFiles(props, logback)


def daemon_command(config: Config, jars: Path, files: DaemonFiles) -> list[str]:
    java = shutil.which(config.kcl.java)
    if java is None:
        raise ConfigError(
            "kcl.java",
            f"{config.kcl.java!r} not found: install a Java 17+ runtime "
            "(Debian: apt-get install openjdk-17-jre-headless) or set kcl.java to its path",
        )
    return [
        java,
        "-cp",
        f"{jars}/*",
        DAEMON_CLASS,
        "--properties-file",
        str(files.properties),
        "--log-configuration",
        str(files.logback),
    ]


def check_child_imports() -> None:
    try:
        import amazon_kclpy  # noqa: F401
    except ImportError:
        raise ConfigError(
            "kcl",
            "amazon_kclpy is not installed in this Python: pip install 'streamproc[kcl]'",
        ) from None


class ChildMetrics:
    """``/metrics`` for the whole task: the aggregate of every child's values.

    Children write their metrics to files in ``directory`` (prometheus_client's multiprocess
    mode, switched on by ``PROMETHEUS_MULTIPROC_DIR`` in their environment); this process serves
    the sum. Gauges of children that exited (a lease moved, a shard ended) are dropped by
    :meth:`reap`, so a moved shard does not report twice.
    """

    def __init__(self, directory: Path) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        if directory.exists():
            shutil.rmtree(directory)  # values of an earlier run would be added in
        directory.mkdir(parents=True)
        self.directory = directory
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=str(directory))  # type: ignore[no-untyped-call]

    def serve(self, host: str, port: int) -> str:
        from prometheus_client import start_http_server

        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                "metrics.port", f"cannot serve metrics on {host}:{port}: {exc}"
            ) from None
        return f"http://{host}:{port}/metrics"

    def reap(self) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        pids: set[int] = set()
        for path in self.directory.glob("gauge_live*_*.db"):
            digits = path.stem.rsplit("_", 1)[-1]
            if digits.isdigit():
                pids.add(int(digits))
        for pid in pids:
            if not _alive(pid):
                mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _death_signal_setter() -> Callable[[], None] | None:
    """A pre-exec hook that makes the daemon get SIGTERM when we die (Linux PR_SET_PDEATHSIG),
    so a killed wrapper never leaves a daemon holding leases. Resolved here, before the fork:
    importing or loading libraries in the forked child could deadlock on a lock held by another
    thread (the metrics server)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: nothing to set
        return None
    term = int(signal.SIGTERM)

    def hook() -> None:
        prctl(1, term)  # PR_SET_PDEATHSIG

    return hook


def exit_status(status: int, *, stop_requested: bool) -> int:
    """Our exit status for the daemon's: 0 after a requested stop that ended with the JVM's
    SIGTERM status (143, or -15 if it died of the signal itself); otherwise the shell's
    convention (128 + signal for a signal)."""
    if stop_requested and status in (0, 143, -int(signal.SIGTERM)):
        return 0
    return status if status >= 0 else 128 - status


def run_daemon(
    config: Config,
    *,
    config_path: str | None,
    work_dir: Path | None = None,
    out: TextIO = sys.stderr,
) -> int:
    """Start the daemon, forward SIGTERM/SIGINT to it, return 0 for a clean (forwarded) stop or
    the daemon's exit status otherwise."""
    check_child_imports()
    jars = find_jars(config)
    directory = work_dir or Path(tempfile.mkdtemp(prefix="streamproc-kcl-"))
    files = write_files(config, config_path=config_path, directory=directory)
    command = daemon_command(config, jars, files)
    env = dict(os.environ)
    env.setdefault("STREAMPROC_KCL_WORKER", worker_id(config))
    metrics: ChildMetrics | None = None
    served = "off (metrics.enabled = false)"
    if config.metrics.enabled:
        metrics = ChildMetrics(directory / "metrics")
        served = metrics.serve(config.metrics.host, config.metrics.port)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics.directory)
    print(
        f"streamproc kcl: worker {worker_id(config)!r} of application "
        f"{config.kcl.application_name!r} on stream {config.source.stream!r}\n"
        f"  properties: {files.properties}\n  command: {shlex.join(command)}\n"
        f"  metrics: {served}",
        file=out,
        flush=True,
    )
    stop_requested_at: list[float] = []
    daemon: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        if stop_requested_at:
            return
        stop_requested_at.append(time.monotonic())
        print(
            f"streamproc kcl: {signal.Signals(signum).name}: asking the daemon to checkpoint "
            f"and stop (up to {config.kcl.stop_timeout_s:.0f} s)",
            file=out,
            flush=True,
        )
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)

    # Handlers first: a stop that arrives while the daemon starts is still forwarded.
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        # A session of its own: a terminal's Ctrl-C reaches only us, and we stop the daemon
        # gracefully instead of every child dying mid-batch.
        daemon = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            command, env=env, start_new_session=True, preexec_fn=_death_signal_setter()
        )
        if stop_requested_at:
            daemon.send_signal(signal.SIGTERM)
        status = _wait(daemon, metrics, stop_requested_at, config.kcl.stop_timeout_s, out)
    except BaseException:
        if daemon is not None and daemon.poll() is None:  # never leave the daemon behind
            _kill_session(daemon)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    code = exit_status(status, stop_requested=bool(stop_requested_at))
    if stop_requested_at and code == 0:
        took = time.monotonic() - stop_requested_at[0]
        print(f"streamproc kcl: stopped in {took:.1f} s", file=out, flush=True)
    elif code != 0:
        print(
            f"streamproc kcl: the daemon exited with status {status} (its log above says why)",
            file=out,
            flush=True,
        )
    return code


def _wait(
    daemon: subprocess.Popen[bytes],
    metrics: ChildMetrics | None,
    stop_requested_at: list[float],
    stop_timeout_s: float,
    out: TextIO,
) -> int:
    while True:
        try:
            return daemon.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if metrics is not None:
                metrics.reap()
            if stop_requested_at and time.monotonic() - stop_requested_at[0] > stop_timeout_s:
                print("streamproc kcl: the daemon did not stop in time; killing it", file=out)
                _kill_session(daemon)


def _kill_session(daemon: subprocess.Popen[bytes]) -> None:
    """SIGKILL the daemon and its shard processes (its session's process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(daemon.pid, signal.SIGKILL)
    daemon.wait(timeout=10)

"""The ``residency-monitor`` command line: builds configuration, then calls a driver."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import click

from . import __version__
from .engine import EngineConfig
from .flows import FlowConfig
from .networks import NetworkSet
from .output import TableWriter, summary_lines
from .records import FlowRecord
from .replay import replay, stderr_progress
from .sample import SAMPLE_PATH


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="residency-monitor")
def main() -> None:
    """Watch where outbound traffic goes, and over which TLS."""


@main.command("replay")
@click.argument("captures", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), default="jsonl",
              show_default=True,
              help="JSON Lines (one flow record per line) or a table for people.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write records here instead of standard output.")
@click.option("--internal", "internal", multiple=True, metavar="CIDR",
              help="Internal network (repeatable); default: RFC 1918, CGNAT, link-local, ULA, "
                   "loopback.")
@click.option("--interim/--no-interim", default=True, show_default=True,
              help="Emit interim records for flows that outlive the active timeout.")
@click.option("--tcp-idle", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds (packet time) before an idle TCP flow ends.")
@click.option("--tcp-closed", type=click.FloatRange(min=0), default=30, show_default=True,
              help="Seconds a TCP flow is kept after FIN from both sides or RST.")
@click.option("--udp-idle", type=click.FloatRange(min=1), default=60, show_default=True,
              help="Seconds before an idle UDP (or other IP protocol) flow ends.")
@click.option("--active-timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds after which a long flow gets an interim record (and goes on).")
@click.option("--max-flows", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Flows tracked at once; beyond it the longest-idle are evicted.")
@click.option("--quiet", "-q", is_flag=True, help="No summary on standard error.")
def replay_cmd(captures: tuple[Path, ...], fmt: str, output: Path | None,
               internal: tuple[str, ...], interim: bool, tcp_idle: float, tcp_closed: float,
               udp_idle: float, active_timeout: float, max_flows: int, quiet: bool) -> None:
    """Replay pcap/pcapng files (gzip too) into flow records.

    With no CAPTURES, replays the sample capture bundled with the package.
    Exit status: 0 done (warnings go to standard error), 3 nothing could be
    read, 4 some capture could not be opened (the others were replayed).
    """
    paths = list(captures) or [SAMPLE_PATH]
    config = EngineConfig(flows=FlowConfig(
        tcp_idle=tcp_idle, tcp_closed=tcp_closed, udp_idle=udp_idle, other_idle=udp_idle,
        active=active_timeout, max_flows=max_flows))
    if internal:
        config.internal_networks = _networks(internal)
    with ExitStack() as stack:
        out = stack.enter_context(open(output, "w", encoding="utf-8")) if output else sys.stdout
        if fmt == "table":
            table = TableWriter(out)
            write = table.add
        else:
            def write(rec: FlowRecord) -> None:
                out.write(rec.to_json())
                out.write("\n")
            table = None
        sink = write if interim else (lambda r: write(r) if r.final else None)
        result = replay(paths, sink, config, progress=None if quiet else stderr_progress())
        if table is not None:
            table.close()
    if not quiet:
        for line in summary_lines(result):
            click.echo(line, err=True)
    for msg in result.errors:
        click.echo(f"error: {msg}", err=True)
    sys.exit(result.exit_code)


def _networks(cidrs: tuple[str, ...]) -> tuple[str, ...]:
    try:
        NetworkSet(cidrs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--internal") from None
    return cidrs


@main.command("sample")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=SAMPLE_PATH,
              show_default=True, help="Where to write the sample capture.")
def sample_cmd(out: Path) -> None:
    """Regenerate the bundled sample capture (deterministic)."""
    from .sample import build_sample, write_pcap
    write_pcap(out, build_sample())
    click.echo(f"wrote {out}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()

"""``streamq bench``: run ``streamq.cli.benchmark.run_bench`` and show its table (or JSON)."""

from __future__ import annotations

import json
import os
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .common import leave_embedded


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit.endswith("/s"):
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.3f} ms"
    return f"{value:.1f} {unit}"


def _ratio(value: float | None) -> str:
    """Two decimals; two significant digits below 0.1 (a durable row's 0.0017)."""
    return "-" if value is None else f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as one table plus the server and versions lines."""
    p, v = report["params"], report["versions"]
    table = Table("measurement", "value", "ceiling", "ratio", "target", "ok",
                  title=f"streamq bench: n={p['n']}, -c {p['concurrency']}, "
                        f"payload {p['payload_bytes']} B")
    for row in report["rows"]:
        ceiling = "-" if row["ceiling"] is None else \
            f"{_fmt(row['ceiling'], '/s')} {row['ceiling_measurement']}"
        table.add_row(row["measurement"], _fmt(row["value"], row["unit"]), ceiling,
                      _ratio(row["ratio"]), row["target"],
                      "[green]yes[/]" if row["meets_target"] else "[red]no[/]")
    console.print(table)
    d = report["details"]
    console.print(f"server: {v['server_name']} {v['server_version']} at {p['url']}")
    console.print(f"versions: streamq {v['streamq']}, redis-py {v['redis_py']} "
                  f"({'hiredis ' + str(v['hiredis_version']) if v['hiredis'] else 'no hiredis'})"
                  f", python {v['python']}, {v['cpus']} cpu(s)")
    parts = []  # only what the measurements run (--only) reported
    if "drain_first_result_s" in d:
        parts.append(f"drain timed from the first stored result ({d['drain_first_result_s']}s "
                     f"after the worker was started) to the last: {d['drain_counted_tasks']} "
                     f"tasks in {d['drain_timed_s']}s (longest stall "
                     f"{d['drain_longest_stall_s']}s)")
    if "roundtrip_samples" in d:
        parts.append(f"round trips: {d['roundtrip_samples']} samples")
    console.print("; ".join([*parts, f"total {report['elapsed_s']}s"]), style="dim")


@click.command()
@click.option("--url", default=None, metavar="URL",
              help="redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL "
                   "(default: "
                   "$STREAMQ_URL, else the "
                   "embedded server).")
@click.option("-n", "n", type=click.IntRange(1, 10_000_000), default=20000, show_default=True,
              help="Tasks (and raw entries) per throughput measurement.")
@click.option("-c", "--concurrency", type=click.IntRange(1, 512), default=2, show_default=True,
              help="Worker processes for the drain measurement.")
@click.option("--payload-bytes", type=click.IntRange(0, 64 * 1024 * 1024), default=0,
              show_default=True, help="Size of each task's string argument.")
@click.option("--only", metavar="GROUP[,GROUP]", default=None,
              help="Run only these measurements: enqueue, durable, drain, spread, threads, "
                   "partitions, "
                   "roundtrip (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def bench(url: str | None, n: int, concurrency: int, payload_bytes: int, only: str | None,
          as_json: bool) -> None:
    """Measure streamq against the raw redis-py ceiling on the same server.

    Runs raw XADD / pipelined XADD / XREADGROUP+XACK+XDEL loops, then streamq's
    delay(), map(), a real worker draining N noop tasks, delay()+get() round trips
    and the idle worker's memory, and reports each as a ratio of its ceiling next
    to its target. Keys go to a fresh random namespace and are deleted at the end;
    the server does get loaded while it runs. Missed targets still exit 0.

    \b
    Example:
      streamq bench --url redis://127.0.0.1:6379/0 -n 20000 -c 2
      streamq bench -n 2000 --json > bench.json     # embedded server
      streamq bench --only enqueue,drain            # two of the measurements
    """
    from .benchmark import GROUPS, run_bench

    groups = frozenset(GROUPS)
    if only is not None:
        groups = frozenset(g.strip() for g in only.split(",") if g.strip())
        unknown = sorted(groups - set(GROUPS))
        if unknown or not groups:
            raise click.BadParameter(
                f"unknown measurement(s) {', '.join(unknown) or '(none given)'}; choose from "
                f"{', '.join(GROUPS)}", param_hint="--only")

    err = Console(stderr=True, highlight=False)
    status = err.status("starting") if err.is_terminal else None

    def progress(message: str) -> None:
        if status is not None:
            status.update(message)
        else:
            err.print(f"bench: {message}", style="dim", soft_wrap=True)

    embedded = None
    if url is None and not os.environ.get("STREAMQ_URL"):  # the project's embedded server
        from ..server.embedded import resolve_embedded

        embedded = resolve_embedded()  # starts it unless it runs
        url = embedded.url
    if status is not None:
        status.start()
    try:
        report = run_bench(url, n, concurrency, payload_bytes, progress=progress,
                           only=groups)
    finally:
        if status is not None:
            status.stop()
        if embedded is not None:
            leave_embedded(embedded, err, "the bench")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        console = Console(highlight=False)
        if not console.is_terminal:
            console.width = 120  # a file or pipe: room for the whole table
        render(report, console)

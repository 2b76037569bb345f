"""`fleet simulate`: the simulated fleet (jobs/simulator.py) from the command line."""

from __future__ import annotations

import json
import sys

import click

from cli.support import on_stop_signals
from db import demo
from jobs.simulator import MAX_INTERVAL, MIN_INTERVAL, FleetConfig, Simulator, SimulatorConfig, human_summary


@click.command("simulate")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The API's base URL.")
@click.option("--key", required=True, help="A device API key (`fleet demo seed` prints one); '-' reads it from stdin.")
@click.option("--meters", type=click.IntRange(0, demo.MAX_DEVICES), default=20, show_default=True)
@click.option("--vehicles", type=click.IntRange(0, demo.MAX_DEVICES), default=20, show_default=True)
@click.option("--prefix", default="demo-", show_default=True, help="Device id prefix (as given to `demo seed`).")
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds to run; 0: until Ctrl-C/SIGTERM. Default 60, or no time bound with --count.",
)
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many new readings.")
@click.option(
    "--interval",
    type=click.FloatRange(MIN_INTERVAL, MAX_INTERVAL),
    default=60.0,
    show_default=True,
    help="Seconds between two reports of one device.",
)
@click.option("--batch", is_flag=True, help="Send what is due each second as one batch (a gateway).")
@click.option("--seed", type=int, default=None, help="Random seed: the same fleet and events each run.")
@click.option("--concurrency", type=click.IntRange(1, 32), default=2, show_default=True, help="Sender threads.")
@click.option("--retry-rate", type=click.FloatRange(0, 1), default=0.03, show_default=True, help="Re-sent share.")
@click.option("--late-rate", type=click.FloatRange(0, 1), default=0.02, show_default=True, help="Held-back share.")
@click.option("--skewed", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="Skewed-clock share.")
@click.option(
    "--low-efficiency", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="Poor-charger share."
)
@click.option("--progress", type=click.FloatRange(min=0), default=5.0, show_default=True, help="Seconds; 0: off.")
@click.option("--wait-ready", type=click.FloatRange(min=0), default=30.0, show_default=True, help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
def simulate_command(
    url: str,
    key: str,
    meters: int,
    vehicles: int,
    prefix: str,
    duration: float | None,
    count: int | None,
    interval: float,
    batch: bool,
    seed: int | None,
    concurrency: int,
    retry_rate: float,
    late_rate: float,
    skewed: float,
    low_efficiency: float,
    progress: float,
    wait_ready: float,
    as_json: bool,
) -> None:
    """Simulate the demo fleet: post realistic readings through the API (progress on stderr).

    Exits non-zero when the API was unreachable, answered 5xx, or did not accept every reading."""
    if key == "-":  # keeps the key out of the process list
        key = sys.stdin.readline().strip()
        if not key:
            raise click.ClickException("--key -: no key on stdin")
    if duration is None:
        duration = None if count is not None else 60.0
    try:
        config = SimulatorConfig(
            url=url,
            key=key,
            fleet=FleetConfig(
                meters=meters,
                vehicles=vehicles,
                prefix=prefix,
                interval=interval,
                retry_rate=retry_rate,
                late_rate=late_rate,
                skewed_share=skewed,
                low_efficiency_share=low_efficiency,
            ),
            duration=duration or None,
            count=count,
            batch=batch,
            seed=seed,
            concurrency=concurrency,
            wait_ready=wait_ready,
            progress_every=progress,
        )
        demo.device_ids(prefix, meters, vehicles)
        if not meters and not vehicles:
            raise ValueError("the fleet needs at least one meter or vehicle")
        sim = Simulator(config, progress=sys.stderr)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    # SIGINT/SIGTERM: the first stops the simulation (queued readings are still sent), the second aborts.
    with on_stop_signals(lambda _signum: sim.stop(abort=sim._stop.is_set())):
        summary = sim.run()
    click.echo(json.dumps(summary.as_dict(), indent=2) if as_json else human_summary(summary))
    if not summary.ok:
        sys.exit(1)

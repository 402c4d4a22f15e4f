"""The `incidents` command: run the stack, talk to it, audit it.

The development commands (`up`, `demo`, `chaos`, `bench`, `traces`) run code of the
`tooling` package, which is not deployed: each imports it inside its body, so the
product never imports it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from services.audit.cli import audit_app
from services.audit.receipt_check import receipt_app
from services.deadletter_cli import deadletter_app
from services.intake.directory_cli import directory_app
from services.witness.cli import witness

app = typer.Typer(
    name="incidents",
    help="Event-sourced incident workflow: intake, triage, escalation, audit.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Event-sourced incident workflow: intake, triage, escalation, audit."""


traces_app = typer.Typer(
    name="traces",
    help="Look at the traces the services keep locally.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(audit_app, name="audit")
app.add_typer(traces_app, name="traces")
app.command()(witness)
app.add_typer(receipt_app, name="receipt")
app.add_typer(directory_app, name="directory")
app.add_typer(deadletter_app, name="deadletter")


@app.command()
def up(
    run_dir: str = typer.Option(
        None, "--run-dir", help="Folder for logs and state (default: ./.run/<timestamp>)."
    ),
    traces: bool = typer.Option(
        False,
        "--traces",
        help="Also run Arize Phoenix on 127.0.0.1 (UI and OTLP at :6006, or $PHOENIX_PORT)"
        " and send every service's spans to it. Needs the 'traces' extra.",
    ),
) -> None:
    """Start the whole stack here: broker, PostgreSQL if needed, and the four services."""
    if traces:
        from tooling.traces import phoenix_missing

        missing = phoenix_missing()
        if missing:
            typer.echo(missing, err=True)
            raise typer.Exit(2)
    from tooling.stack import run_stack

    raise typer.Exit(run_stack(run_dir=run_dir, traces=traces))


@traces_app.command("show")
def traces_show(
    incident_id: str = typer.Argument(..., help="The incident's id."),
    directory: Path = typer.Option(
        None,
        "--dir",
        help="Folder of the span files (default: $INCIDENTS_TRACES_DIR or ~/.incidents/traces).",
    ),
    audit: str = typer.Option(
        None,
        "--audit",
        help="Base URL of the audit service (e.g. http://127.0.0.1:8004): the incident's"
        " trace ids come from its timeline. Without it, only spans that name the incident"
        " are found.",
    ),
    token: str = typer.Option(
        None, "--token", envvar="INCIDENTS_TOKEN", help="Auditor bearer token for --audit."
    ),
    all_spans: bool = typer.Option(
        False, "--all", help="Show database statements and ASGI send/receive spans too."
    ),
) -> None:
    """Draw an incident's traces as waterfalls, from the spans kept on this machine."""
    from tooling.traces import show

    code = show(incident_id, directory, audit=audit, token=token, all_spans=all_spans)
    raise typer.Exit(code)


@app.command()
def demo(
    intake: str = typer.Option("http://127.0.0.1:8001", "--intake", help="Intake's base URL."),
    audit: str = typer.Option("http://127.0.0.1:8004", "--audit", help="Audit's base URL."),
    speed: float = typer.Option(
        1.0,
        "--speed",
        min=0.01,
        help="Pace of the narration: the pauses between scenes are divided by N. The"
        " deadlines are the running stack's policy.",
    ),
    max_wait: float = typer.Option(
        300.0,
        "--max-wait",
        min=1.0,
        help="Stop (exit 1) if the stack's policy would take longer than this many seconds"
        " to reach the ethics officer.",
    ),
) -> None:
    """Play the motivating case against a running stack; print who knew what, when.

    Start the stack with the demo policy first (hours become seconds):
    INCIDENTS_POLICY_FILE=services/data/policy-demo.yaml incidents up
    """
    from tooling.demo import run_demo

    raise typer.Exit(run_demo(intake_url=intake, audit_url=audit, speed=speed, max_wait=max_wait))


@app.command("event-keys")
def event_keys(
    out: Path = typer.Argument(..., help="Folder of the keys (created, owner-only)."),
) -> None:
    """Make each service's event signing key (once) and the key set of their public keys
    (docs/event-signing.md): what INCIDENTS_EVENT_SIGNING_KEY and INCIDENTS_EVENT_KEYS_FILE
    take in production. An existing key is kept; the key set is written again."""
    from services.infra.signing import ensure_key_files

    files, keys_file = ensure_key_files(out)
    for service, path in files.items():
        typer.echo(f"{service}: {path}")
    typer.echo(f"key set: {keys_file}")


@app.command()
def schemas(
    out: Path = typer.Option(
        Path("schemas"), "--out", help="Folder of the published JSON Schemas and AsyncAPI file."
    ),
    check: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 if the folder differs from the code."
    ),
) -> None:
    """Publish the event contract: a JSON Schema per event type and asyncapi.yaml."""
    from services.domain.schemas import render_all

    wanted = render_all()
    present = {p.name for p in out.glob("*.json")} | {
        p.name for p in out.glob("*.yaml") if p.name in wanted
    }
    missing = sorted(name for name in wanted if name not in present)
    differ = sorted(
        name
        for name in wanted
        if name in present and (out / name).read_text(encoding="utf-8") != wanted[name]
    )
    extra = sorted(present - wanted.keys())
    if check:
        problems = (
            [f"missing: {out / n}" for n in missing]
            + [f"differs: {out / n}" for n in differ]
            + [f"extra:   {out / n}" for n in extra]
        )
        for line in problems:
            typer.echo(line, err=True)
        if problems:
            typer.echo("schemas are stale: run `make schemas`", err=True)
            raise typer.Exit(1)
        typer.echo(f"{len(wanted)} files in {out} are up to date")
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in [*missing, *differ]:
        (out / name).write_text(wanted[name], encoding="utf-8")
    for name in extra:
        (out / name).unlink()
    typer.echo(
        f"{out}: {len(missing)} written, {len(differ)} updated, {len(extra)} removed, "
        f"{len(wanted) - len(missing) - len(differ)} unchanged"
    )


@app.command()
def chaos(
    reports: int = typer.Option(10_000, "--reports", min=1, help="Reports to send."),
    rate: float = typer.Option(100.0, "--rate", min=0.1, help="Reports per second."),
    kills: int = typer.Option(3, "--kills", min=0, help="SIGKILLs of each service."),
    broker_restart: bool = typer.Option(
        False, "--broker-restart", help="Also kill the broker once and start it empty."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the mix and the faults."),
    anonymous: float = typer.Option(
        0.25, "--anonymous", min=0.0, max=1.0, help="Share of anonymous reports."
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Folder for logs and the verdict (default ./.run/chaos-<time>)."
    ),
) -> None:
    """Crash every process of a local stack while reports flow, then check the invariants.

    Starts its own stack (Tansu, the four services, a fresh database) with a policy of
    seconds, sends reports at a steady rate (anonymous and named, the seed case among
    them; a lost answer is retried with the same Idempotency-Key) and acknowledges some.
    Meanwhile it SIGKILLs each service at random moments and restarts it: intake right
    after a 202, each service while its outbox relay has unpublished rows when it can
    catch one. After a quiet period it checks, from the ledger: one submission entry,
    one triage decision and the notifications per 202; no entry twice; exactly one
    escalation per passed deadline and level; no excluded person told; and `incidents
    audit verify`. It prints a verdict table, writes <run-dir>/verdict.json and exits 0
    only if every invariant held (1: one broke, 2: the run failed).

    After a broker restart (--broker-restart) the broker has lost every topic, record
    and offset. Each service's BrokerWatch notices that its marker topic is gone,
    creates its topics again, rebuilds its consumers (from the earliest offset) and
    rewinds its outbox relay by INCIDENTS_OUTBOX_REPLAY_WINDOW, so everything written in
    PostgreSQL is published again, in order. Consumers dedupe by their tracking rows
    (consumer, event id) and the ledger by (topic, event id): nothing is lost, nothing
    is recorded twice. No service is killed until every relay has rewound.
    """
    from tooling.chaos import ChaosConfig, run_chaos

    config = ChaosConfig(
        reports=reports,
        rate=rate,
        kills=kills,
        broker_restart=broker_restart,
        seed=seed,
        anonymous=anonymous,
        run_dir=run_dir,
    )
    raise typer.Exit(run_chaos(config))


@app.command()
def bench(
    quick: bool = typer.Option(
        False, "--quick", help="Small sizes, a few minutes (for development)."
    ),
    url_intake: str | None = typer.Option(
        None, "--url-intake", help="Measure running services: intake's URL (with --url-audit)."
    ),
    url_audit: str | None = typer.Option(
        None, "--url-audit", help="Audit's URL of the running services (with --url-intake)."
    ),
    database_url: str | None = typer.Option(
        None,
        "--database-url",
        help="PostgreSQL whose server holds the bench's own databases (default: that of"
        " INCIDENTS_DATABASE_URL). With --url-*, the running stack's database: the"
        " escalation figure writes deadlines there (skipped without it).",
    ),
    out: Path = typer.Option(
        Path("bench/results"), "--out", help="Folder of the results: <UTC time>.json and .md."
    ),
    token: str = typer.Option(
        "dev-auditor-token", "--token", envvar="INCIDENTS_TOKEN", help="Auditor bearer token."
    ),
    only: str = typer.Option(
        "",
        "--only",
        help="Comma-separated figure groups: verify, append, ledger, console, e2e,"
        " escalation, intake, refusals, signing, org, attachments.",
    ),
    org: int | None = typer.Option(
        None,
        "--org",
        min=13,
        help="Also measure the per-report costs (triage, intake, audit) and triage's memory"
        " with a generated organisation of this many people, beside the seed's 12 (group"
        " org; --only org alone defaults to 254,000, or 20,000 with --quick).",
    ),
) -> None:
    """Measure the figures of docs/benchmarks.md, each beside a raw baseline of the same run.

    Starts its own stack (Tansu on a free port, a fresh database, the four services)
    unless --url-intake and --url-audit name running ones. Prints a table and writes
    <out>/<UTC time>.json and a markdown summary. Exit 0 when every figure ran (a missed
    target is reported, not an error), 1 if one failed, 2 on bad options.
    """
    from tooling.bench.runner import run_bench

    groups = [g.strip() for g in only.split(",") if g.strip()]
    raise typer.Exit(
        run_bench(
            quick=quick,
            url_intake=url_intake,
            url_audit=url_audit,
            database_url=database_url,
            out=out,
            token=token,
            only=groups,
            org=org,
        )
    )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

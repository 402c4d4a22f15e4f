"""The auditor's console holds up with 10,000 incidents and an incident of 2,000 events.

The ledger is filled by COPY with 10,000 synthetic incidents (8 events each, the bench's
generator), then one incident of 2,000+ events is appended the way audit ingests
records. The console index folds it all; the list pages, filters and the incident page
answer 200 with the expected rows. Timings are printed, never asserted (they belong to
`incidents bench`).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI

from services.audit.app import create_app
from services.audit.ledger import append_records
from services.audit.ui_index import catch_up
from services.audit.verify import verify_bundle
from services.infra.settings import AuditSettings, CommonSettings
from tests.helpers import serving
from tests.integration.test_bench_quick import assert_complete
from tooling.bench.console import BIG, big_incident, console_figures
from tooling.bench.figures import fill_ledger

pytestmark = pytest.mark.integration

INCIDENTS = 10_000
PER_INCIDENT = 8  # the bench generator's life of an incident
VIEWS = 2_000


@pytest.fixture(scope="module")
async def console(
    kafka_bootstrap: str,
    make_database: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """One audit service over the big ledger for the whole module (filling it takes a while)."""
    settings = CommonSettings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=make_database("console"),
        kafka_topic_prefix=f"t{secrets.token_hex(4)}.",
        environment="test",
    )
    tmp_path = tmp_path_factory.mktemp("console")
    began = time.perf_counter()
    await fill_ledger(settings.database_url, INCIDENTS * PER_INCIDENT)
    print(
        f"\nfilled the ledger with {INCIDENTS * PER_INCIDENT:,} entries in"
        f" {time.perf_counter() - began:.1f} s"
    )
    app = create_app(
        AuditSettings(
            **settings.model_dump(), signing_key_file=tmp_path / "key.pem", checkpoint_interval=3600
        )
    )
    async with serving(app, "https://audit") as client:
        runtime = app.state.runtime
        records = big_incident(VIEWS)
        for at in range(0, len(records), 500):
            async with runtime.db.acquire() as conn, conn.transaction():
                await append_records(conn, records[at : at + 500])
        began = time.perf_counter()
        folded = await catch_up(runtime)
        print(
            f"console index: folded the rest ({folded:,} entries) in"
            f" {time.perf_counter() - began:.1f} s"
        )
        await app.state.heads.sign_if_due(force=True)  # unless the signer just did
        yield client, app


async def login(client: httpx.AsyncClient, token: str) -> httpx.Response:
    client.cookies.clear()
    page = await client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    return await client.post(
        "/ui/login",
        data={"csrf": csrf.group(1), "token": token, "next": "/ui/"},
        headers={"sec-fetch-site": "same-origin"},
    )


def rows(page: httpx.Response) -> list[str]:
    return re.findall(r'href="/ui/incidents/([^"]+)"', page.text)


async def timed(client: httpx.AsyncClient, url: str) -> httpx.Response:
    began = time.perf_counter()
    answer = await client.get(url)
    print(f"GET {url}: {answer.status_code} in {(time.perf_counter() - began) * 1000:.0f} ms")
    return answer


async def test_the_list_pages_through_10000_incidents_by_keyset(
    console: tuple[httpx.AsyncClient, FastAPI],
) -> None:
    client, app = console
    assert (await client.get("/ui/")).status_code == 303  # not signed in: the login page
    assert (await login(client, "dev-auditor-token")).status_code == 303
    first = await timed(client, "/ui/")
    assert first.status_code == 200
    assert rows(first)[0] == BIG  # newest first
    assert len(rows(first)) == 50
    older = re.search(r'href="/ui/\?before=(\d+)" rel="next"', first.text)
    assert older is not None
    second = await timed(client, f"/ui/?before={older.group(1)}")
    assert second.status_code == 200
    assert len(rows(second)) == 50
    assert not set(rows(first)) & set(rows(second))
    newer = re.search(r'href="/ui/\?after=(\d+)" rel="prev"', second.text)
    assert newer is not None
    back = await client.get(f"/ui/?after={newer.group(1)}")
    assert rows(back) == rows(first)
    async with app.state.runtime.db.acquire() as conn:
        listed = await conn.fetchval("SELECT count(*) FROM console_incidents")
        last = await conn.fetchval(
            "SELECT first_idx FROM console_incidents ORDER BY first_idx LIMIT 1"
        )
    assert listed == INCIDENTS + 1
    deepest = await timed(client, f"/ui/?before={last + 1}")
    assert len(rows(deepest)) == 1
    assert 'rel="next"' not in deepest.text


async def test_filters_find_the_overdue_breached_critical_incident(
    console: tuple[httpx.AsyncClient, FastAPI],
) -> None:
    client, _ = console
    await login(client, "dev-auditor-token")
    for query in ("overdue=1", "breached=1", "severity=critical", "category=fraud&status=triaged"):
        page = await timed(client, f"/ui/?{query}")
        assert page.status_code == 200
        assert rows(page) == [BIG], query
    assert "triaged, level 1 asked" in page.text  # the words every view uses (status.py)
    investigating = await timed(client, "/ui/?status=investigating&category=harassment")
    assert len(rows(investigating)) == 50
    assert BIG not in rows(investigating)


async def test_the_page_of_an_incident_with_2000_events_renders_and_verifies(
    console: tuple[httpx.AsyncClient, FastAPI],
) -> None:
    client, _ = console
    await login(client, "dev-auditor-token")
    page = await timed(client, f"/ui/incidents/{BIG}")
    assert page.status_code == 200
    text = page.text
    total = VIEWS + 4
    assert f"Timeline, in ledger order ({total} entries)" in text
    assert text.count("<code>incident.viewed.v1</code>") == VIEWS
    assert "SECRET-" not in text  # report content never reaches the auditor's timeline
    assert re.search(rf"<strong>Verified</strong>: {total} ledger entries", text)
    assert text.count('class="who"') >= 3  # reporter, p-zhou, p-chen rows in the chart
    assert "reporter acknowledgement breached" in text
    assert re.search(r'id="state-level">level 1\b', text)  # as the handler sees it, not 0
    again = await timed(client, f"/ui/incidents/{BIG}")  # the badge is cached per head
    assert again.status_code == 200
    bundle = await timed(client, f"/ui/incidents/{BIG}/evidence.json")
    assert bundle.status_code == 200
    assert "attachment" in bundle.headers["content-disposition"]
    report = verify_bundle(bundle.json())
    assert report.ok, report.reason
    assert report.entries_checked == total


async def test_the_as_of_instant_shows_the_past(
    console: tuple[httpx.AsyncClient, FastAPI],
) -> None:
    client, _ = console
    await login(client, "dev-auditor-token")
    before = await client.get(f"/ui/incidents/{BIG}/as-of?as_of=2000-01-01T00:00:00Z")
    assert before.status_code == 200
    assert "Nobody knew yet at this instant." in before.text
    assert "0 of" in before.text


async def test_a_principal_without_the_auditor_role_is_refused(
    console: tuple[httpx.AsyncClient, FastAPI],
) -> None:
    client, _ = console
    await login(client, "dev-chen-token")
    assert (await client.get("/ui/")).status_code == 403
    assert (await client.get(f"/ui/incidents/{BIG}")).status_code == 403
    assert (await client.get(f"/ui/incidents/{BIG}/evidence.json")).status_code == 403


async def test_forms_need_the_csrf_token(console: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, _ = console
    client.cookies.clear()
    await client.get("/ui/login")
    refused = await client.post("/ui/login", data={"csrf": "forged", "token": "dev-auditor-token"})
    assert refused.status_code == 403
    assert "set-cookie" not in refused.headers or "session" not in refused.headers["set-cookie"]
    wrong = await login(client, "not-a-token")
    assert wrong.status_code == 401


async def test_without_javascript_the_slider_and_the_instant_reload_the_page(
    console: tuple[httpx.AsyncClient, FastAPI],
) -> None:
    client, _ = console
    await login(client, "dev-auditor-token")
    start = await client.get(f"/ui/incidents/{BIG}?t=0")  # the slider's form
    assert start.status_code == 200
    counted = re.search(r"(\d+) of (\d+) entries recorded", start.text)
    assert counted is not None  # the first append's batch shares one ledger time
    assert 0 < int(counted.group(1)) < int(counted.group(2)) == VIEWS + 4
    assert "reporter acknowledgement breached" not in start.text  # recorded last
    instant = await client.get(f"/ui/incidents/{BIG}?as_of=2000-01-01T00:00:00")  # no zone: UTC
    assert "Nobody knew yet at this instant." in instant.text
    bad = await client.get(f"/ui/incidents/{BIG}?as_of=yesterday")
    assert bad.status_code == 422
    far = await client.get(f"/ui/incidents/{BIG}/as-of?t=1000000000000000")  # not a 500
    assert far.status_code == 422


async def test_signing_out_forgets_the_session(console: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, _ = console
    await login(client, "dev-auditor-token")
    page = await client.get("/ui/")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    out = await client.post(
        "/ui/logout", data={"csrf": csrf.group(1)}, headers={"sec-fetch-site": "same-origin"}
    )
    assert out.status_code == 303
    assert (await client.get("/ui/")).status_code == 303  # back to the login page


async def test_the_console_bench_figures_run_at_toy_size(
    make_database: Callable[[str], str],
) -> None:
    """`incidents bench --only console` measures each figure beside its baseline."""
    figures = await console_figures(
        make_database("bench_console"), incidents=50, views=30, samples=3
    )
    assert [f.key for f in figures] == [
        "console.index",
        "console.list",
        "console.incident",
        "console.badge",
    ]
    for figure in figures:
        assert_complete(figure, has_target=False)
    assert figures[0].details["entries"] == 50 * 8 + 30 + 4

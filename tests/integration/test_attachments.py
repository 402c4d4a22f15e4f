"""Evidence files on a real database and broker (issue 22): an anonymous reporter's 5 MB
PDF downloaded by the routed handler (recorded first), refused to the accused (the same
404 as an unknown file, recorded) and unreadable after erasure; and each bad input."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from services.domain.events import is_sealed
from services.intake import attachments, attachments_api
from services.intake.attachments import Limits
from tests.integration.test_console_intake import browser, csrf_of
from tests.integration.test_handlers import (
    Env,
    auth,
    denials,
    env,
    fetch,
    of_type,
    publish,
    triaged,
    until_routed,
)

pytestmark = pytest.mark.integration
__all__ = ["env"]  # the module's intake app (a fixture of test_handlers)

ADDED = "incident.attachment.added.v1"
DOWNLOADED = "incident.attachment.downloaded.v1"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100


def pdf(size: int) -> bytes:
    return b"%PDF-1.7\n" + os.urandom(size - 9)


async def anonymous_routed(env: Env) -> tuple[str, dict[str, str]]:
    """An anonymous report accusing p-wang, routed to p-chen; its receipt headers."""
    answer = await env.client.post(
        "/v1/reports",
        json={
            "category": "sexual_misconduct",
            "summary": "Assault by store manager",
            "description": "Screenshots attached.",
            "unit": "city-retail",
            "accused": ["p-wang"],
        },
    )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    incident = str(body["incident_id"])
    await publish(env, "incident.triaged.v1", incident, triaged({"p-wang": "accused"}))
    await publish(env, "incident.assigned.v1", incident, {"level": 1, "principals": ["p-chen"]})
    await until_routed(env, incident, {"p-chen": (True, None), "p-wang": (False, "accused")})
    return incident, {"receipt": body["receipt"], "secret": body["secret"]}


def as_reporter(receipt: dict[str, str], name: str | None = None) -> tuple[str, dict[str, str]]:
    headers = {"x-receipt-secret": receipt["secret"]}
    if name is not None:
        headers["x-filename"] = name
    return f"/v1/receipts/{receipt['receipt']}/attachments", headers


async def stored_counts(env: Env) -> tuple[int, int]:
    (row,) = await fetch(
        env.settings,
        "SELECT (SELECT count(*) FROM intake.attachments) AS files,"
        " (SELECT count(*) FROM intake.attachment_chunks) AS chunks",
    )
    return row["files"], row["chunks"]


async def test_a_reporters_pdf_reaches_the_handler_recorded_never_the_accused_nor_after_erasure(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident, receipt = await anonymous_routed(env)
    content = pdf(5 * 1024 * 1024)
    url, headers = as_reporter(receipt, "..%2F..%2Fhome%2Fli%2Fevidence.pdf")
    answer = await env.client.post(url, content=content, headers=headers)
    assert answer.status_code == 201, answer.text
    file_id = answer.json()["attachment_id"]
    assert answer.json()["media_type"] == "application/pdf"
    assert answer.json()["size"] == len(content)
    (added,) = await of_type(env.settings, incident, ADDED)
    assert is_sealed(added.data["name"]) and added.data["author"] == "reporter"

    view = (await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-chen"))).json()
    assert [(f["name"], f["size"]) for f in view["attachments"]] == [("evidence.pdf", len(content))]

    # the download is committed before the first byte is read
    real_read = attachments.read
    seen: list[int] = []

    async def checked_read(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        seen.append(len(await of_type(env.settings, incident, DOWNLOADED)))
        async for chunk in real_read(*args, **kwargs):
            yield chunk

    monkeypatch.setattr("services.intake.attachments_api.read", checked_read)
    path = f"/v1/incidents/{incident}/attachments/{file_id}"
    got = await env.client.get(path, headers=auth("p-chen"))
    assert got.status_code == 200 and got.content == content
    assert seen == [1]
    assert got.headers["content-disposition"].startswith("attachment;")

    # the accused gets exactly what an unknown file gets, and the refusal is recorded
    refused = await env.client.get(path, headers=auth("p-wang"))
    unknown = await env.client.get(
        f"/v1/incidents/{incident}/attachments/{incident}", headers=auth("p-chen")
    )
    assert refused.status_code == unknown.status_code == 404
    assert refused.content == unknown.content
    assert any(
        e.data["principal"] == "p-wang" and e.data["action"] == "download"
        for e in await denials(env.settings, incident)
    )

    # closed, then erased: the key is gone, so are the chunks, nothing opens
    for step in ({"status": "investigating"}, {"status": "closed", "outcome": "Dismissed."}):
        if step["status"] == "investigating":
            await env.client.post(f"/v1/incidents/{incident}/acknowledge", headers=auth("p-chen"))
        changed = await env.client.post(
            f"/v1/incidents/{incident}/status", json=step, headers=auth("p-chen")
        )
        assert changed.status_code == 202, changed.text
    chunks = "SELECT 1 FROM intake.attachment_chunks WHERE attachment_id = $1"
    assert len(await fetch(env.settings, chunks, file_id)) == 5  # 1 MiB each
    eraser = env.app.state.eraser
    (row,) = await fetch(
        env.settings, "SELECT closed_at FROM intake.retention WHERE incident_id = $1", incident
    )
    eraser.clock = lambda: row["closed_at"] + timedelta(days=3650)
    assert incident in await eraser.erase_due()
    async with env.app.state.runtime.db.acquire() as conn:
        assert await env.app.state.keys.get(conn, incident) is None
    assert await fetch(env.settings, chunks, file_id) == []
    after = await env.client.get(path, headers=auth("p-chen"))
    assert after.status_code == 409 and content[:100] not in after.content


async def test_bad_files_are_refused_and_nothing_is_half_stored(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident, receipt = await anonymous_routed(env)
    monkeypatch.setattr(
        attachments_api,
        "limits_of",
        lambda _request: Limits(file=3 * 1024 * 1024 // 2, incident=2 * 1024 * 1024),
    )
    monkeypatch.setattr(attachments, "CHUNK_BYTES", 256 * 1024)
    url, headers = as_reporter(receipt, "a.pdf")
    before = await stored_counts(env)

    async def chunked(data: bytes, fail_at: int | None = None) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 64 * 1024):
            if fail_at is not None and start >= fail_at:
                raise ConnectionResetError("the client went away")
            yield data[start : start + 64 * 1024]

    def post(body: Any, **more: str) -> Any:
        return env.client.post(url, content=body, headers={**headers, **more})

    # over the file limit: announced (refused before reading) or streamed (refused midway)
    assert (await post(pdf(2 * 1024 * 1024))).status_code == 413
    assert (await post(chunked(pdf(2 * 1024 * 1024)))).status_code == 413
    # a forbidden type, an empty file
    assert (await post(b"\x7fELF\x02\x01\x01" + b"\0" * 100)).status_code == 415
    assert (await post(b"")).status_code == 422
    # cut off mid-upload: the transaction never commits
    with pytest.raises(ConnectionResetError):
        await post(chunked(pdf(1024 * 1024), fail_at=600 * 1024))
    assert await stored_counts(env) == before
    assert await of_type(env.settings, incident, ADDED) == []

    # a lying extension: the content wins
    lying = await post(PNG, **{"x-filename": "scan.pdf"})
    assert lying.status_code == 201 and lying.json()["media_type"] == "image/png"
    # over the incident's limit (2 MiB): the third 1 MiB file
    for expected in (201, 413):
        assert (await post(pdf(1024 * 1024))).status_code == expected
    assert len(await of_type(env.settings, incident, ADDED)) == 2

    # an unrouted person gets the unknown file's 404 (recorded)
    file_id = lying.json()["attachment_id"]
    path = f"/v1/incidents/{incident}/attachments/{file_id}"
    unrouted = await env.client.get(path, headers=auth("p-liu"))
    assert unrouted.status_code == 404
    assert unrouted.json()["detail"] == "No such attachment."
    # the reporter downloads her own file
    mine = await env.client.get(f"{url}/{file_id}", headers={"x-receipt-secret": receipt["secret"]})
    assert mine.status_code == 200 and mine.content == PNG

    # closed: nothing can be added, by the reporter or a handler
    await env.client.post(f"/v1/incidents/{incident}/acknowledge", headers=auth("p-chen"))
    closed = await env.client.post(
        f"/v1/incidents/{incident}/status",
        json={"status": "closed", "outcome": "Done."},
        headers=auth("p-chen"),
    )
    assert closed.status_code == 202, closed.text
    assert (await post(PNG)).status_code == 409
    handler = await env.client.post(
        f"/v1/incidents/{incident}/attachments", content=PNG, headers=auth("p-chen")
    )
    assert handler.status_code == 409
    # and no message either way: the reporter reads the outcome
    to_her = await env.client.post(
        f"/v1/incidents/{incident}/messages",
        json={"text": "One more thing"},
        headers=auth("p-chen"),
    )
    from_her = await env.client.post(
        f"/v1/receipts/{receipt['receipt']}/messages",
        json={"text": "One more thing"},
        headers={"x-receipt-secret": receipt["secret"]},
    )
    assert to_her.status_code == from_her.status_code == 409


async def test_the_console_uploads_and_lists_files_without_javascript(env: Env) -> None:
    incident, receipt = await anonymous_routed(env)
    reporter = await browser(env)
    handler = await browser(env, "dev-chen-token")
    try:
        csrf = csrf_of(await reporter.get("/ui/receipt"))
        form = {"csrf": csrf, **receipt}
        page = await reporter.post(
            "/ui/receipt/attachments",
            data=form,
            files={"file": ("C:\\photos\\chat.png", PNG, "application/pdf")},
        )
        assert page.status_code == 200, page.text
        assert "Your file is attached." in page.text and "chat.png" in page.text
        (added,) = await of_type(env.settings, incident, ADDED)
        file_id = added.data["attachment_id"]
        mine = await reporter.post("/ui/receipt/download", data={**form, "attachment_id": file_id})
        assert mine.status_code == 200 and mine.content == PNG

        shown = await handler.get(f"/ui/incidents/{incident}")
        link = f"/ui/incidents/{incident}/attachments/{file_id}"
        assert link in shown.text and 'enctype="multipart/form-data"' in shown.text
        got = await handler.get(link)
        assert got.status_code == 200 and got.content == PNG
        sent = await handler.post(
            f"/ui/incidents/{incident}/attachments",
            data={"csrf": csrf_of(shown), "audience": "reporter"},
            files={"file": ("notes.txt", b"Minutes of the interview.\n", "text/plain")},
        )
        assert sent.status_code == 303, sent.text
        forged = await handler.post(
            f"/ui/incidents/{incident}/attachments",
            data={"csrf": "wrong" * 5},
            files={"file": ("x.txt", b"text", "text/plain")},
        )
        assert forged.status_code == 403
        files = [e.data["media_type"] for e in await of_type(env.settings, incident, ADDED)]
        assert files == ["image/png", "text/plain"]
    finally:
        await reporter.aclose()
        await handler.aclose()


async def test_a_named_reporter_attaches_and_downloads_her_own_files_only(env: Env) -> None:
    answer = await env.client.post(
        "/v1/reports",
        json={"category": "harassment", "summary": "Chat logs", "description": "Attached."},
        headers=auth("p-liu"),
    )
    assert answer.status_code == 202, answer.text
    incident = str(answer.json()["incident_id"])
    url = f"/v1/my/reports/{incident}/attachments"
    stored = await env.client.post(
        url, content=PNG, headers={**auth("p-liu"), "x-filename": "a.png"}
    )
    assert stored.status_code == 201, stored.text
    file_id = stored.json()["attachment_id"]
    mine = await env.client.get(f"{url}/{file_id}", headers=auth("p-liu"))
    assert mine.status_code == 200 and mine.content == PNG
    shown = (await env.client.get(f"/v1/my/reports/{incident}", headers=auth("p-liu"))).json()
    assert [f["name"] for f in shown["attachments"]] == ["a.png"]
    for other in (
        await env.client.get(f"{url}/{file_id}", headers=auth("p-ma")),
        await env.client.post(url, content=PNG, headers=auth("p-ma")),
    ):
        assert other.status_code == 404
    (added,) = await of_type(env.settings, incident, ADDED)
    assert added.actor == "reporter:named" and added.data["author"] == "reporter"

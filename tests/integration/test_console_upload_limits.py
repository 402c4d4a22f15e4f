"""The console's upload forms on a real database and broker: what a form may hold.

The upload routes are exempt from the service's body limit (a file streams in, limited
by the attachment settings), and their small fields, the CSRF token among them, are
read before the file. So the fields themselves are counted: a form with more than the
console's `MAX_FORM_FIELDS` before its file is refused while it arrives, unread beyond
that, whoever sends it (the receipt upload needs no login).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.console.web import MAX_FORM_FIELDS
from tests.integration import test_reports
from tests.integration.test_console_intake import SAME_ORIGIN
from tests.integration.test_reports import Intake

pytestmark = pytest.mark.integration
BOUNDARY = "b0undary"
intake = test_reports.intake  # a running intake of this module's own


async def test_an_endless_form_before_the_file_is_refused_unread(intake: Intake) -> None:
    fields = 5_000  # 5 MB of distinct small fields and never a file
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for i in range(fields):
            sent += 1
            yield (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n'
                + "a" * 1000
                + "\r\n"
            ).encode()
        yield f"--{BOUNDARY}--\r\n".encode()

    answer = await intake.client.post(
        "/ui/receipt/attachments",
        content=body(),
        headers={**SAME_ORIGIN, "content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert answer.status_code == 400, answer.text[:300]
    assert "The form could not be read." in answer.text
    assert sent <= MAX_FORM_FIELDS + 10, sent  # refused as it arrived, not at its end

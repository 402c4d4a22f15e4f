"""The report form leaves nothing in the reporter's browser either.

A browser keeps what was typed into a form's text fields (its form history) and offers
it again in fields of the same name, on that profile, to whoever uses it next: on a
shared or company computer the summary and the accused's name would stay there after
an anonymous report. The form says `autocomplete="off"`, as the receipt form does for
the receipt and the secret, so that browsers keep none of it.
"""

from __future__ import annotations

import re

import pytest

from tests.integration import test_reports
from tests.integration.test_reports import Intake

pytestmark = pytest.mark.integration
intake = test_reports.intake  # a running intake of this module's own


async def test_the_report_form_asks_the_browser_to_keep_nothing(intake: Intake) -> None:
    page = await intake.client.get("/ui/report")
    assert page.status_code == 200
    form = re.search(r'<form method="post" action="/ui/report"[^>]*>', page.text)
    assert form is not None, page.text[:500]
    assert 'autocomplete="off"' in form.group(0)
    # no field of it turns the browser's memory back on
    fields = re.findall(r"<(?:input|textarea)[^>]*>", page.text)
    assert fields and not [f for f in fields if 'autocomplete="on"' in f]
    assert {"summary", "accused", "named", "unit", "location"} <= set(
        re.findall(r'<input type="text" id="[^"]+" name="([^"]+)"', page.text)
    )

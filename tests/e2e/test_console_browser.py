"""The seed case through the console, in Debian's Chromium driven by Playwright.

A reporter makes the seed report on intake's report page and keeps the receipt and the
secret it shows. Nobody at level 1 (p-chen) acts, so the report climbs to the HR head
(p-zhou), who signs in, opens it and acknowledges it on the handler page. The accused
(p-wang) gets the same 404 as for an unknown incident. The reporter sees the
acknowledgement on the receipt page. The auditor opens the incident, sees it verified,
reads the who-knew chart and moves the as-of slider back to the start. Every assertion
reads the page; screenshots go to `.run/artifacts/console/<time>/` (printed).

Needs /usr/bin/chromium (`.ci/run` installs it from Debian); Playwright downloads nothing.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.conftest import ROOT, Stack
from tests.helpers import SEED_CASE, critical_policy

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
LEVEL_SECONDS = 6
"""Each level's time to acknowledge: long enough for a browser under load, short for a test."""


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    policy = tmp_path_factory.mktemp("console-policy") / "policy.yaml"
    policy.write_text(critical_policy("e2e-console", f"{LEVEL_SECONDS}s"), encoding="utf-8")
    return {"INCIDENTS_POLICY_FILE": str(policy)}


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = ROOT / ".run" / "artifacts" / "console" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("the console's browser test needs /usr/bin/chromium (apt-get install chromium)")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def sign_in(page: Page, base: str, token: str) -> None:
    page.goto(f"{base}/ui/login")
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/ui/$"))


def reload_until(page: Page, predicate: Callable[[Page], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while True:
        if predicate(page):
            return
        if time.monotonic() > end:
            raise AssertionError(f"{what} not seen within {timeout}s")
        time.sleep(0.5)
        page.reload()


def test_the_seed_case_through_the_console(stack: Stack, browser: Browser, artifacts: Path) -> None:
    intake, audit = stack.url("intake"), stack.url("audit")

    # The reporter, anonymous, on the report page.
    reporter = browser.new_context(viewport={"width": 1280, "height": 900})
    page = reporter.new_page()
    page.goto(f"{intake}/ui/report")
    page.get_by_label("Category").select_option(SEED_CASE["category"])
    page.get_by_label("Summary (one line)").fill(SEED_CASE["summary"])
    page.get_by_label("What happened").fill(SEED_CASE["description"])
    page.get_by_label("Who is accused").fill(", ".join(SEED_CASE["accused"]))
    page.get_by_label("Business unit (optional)").fill(SEED_CASE["unit"])
    page.screenshot(path=artifacts / "1-report.png", full_page=True)
    page.get_by_role("button", name="Send the report").click()
    page.get_by_role("heading", name="Your report is received").wait_for()
    receipt = page.locator("#receipt").inner_text().strip()
    secret = page.locator("#secret").inner_text().strip()
    assert re.fullmatch(r"[0-9A-Z]{5}(-[0-9A-Z]{5}){3}", receipt)
    page.screenshot(path=artifacts / "2-receipt-and-secret.png", full_page=True)

    # The HR head: the report reaches her once p-chen's level-1 deadline passed.
    zhou = browser.new_context(viewport={"width": 1280, "height": 900})
    handler = zhou.new_page()
    sign_in(handler, intake, "dev-zhou-token")
    reload_until(
        handler,
        lambda p: p.locator("a[href^='/ui/incidents/']").count() > 0,
        LEVEL_SECONDS * 4,
        "the incident in p-zhou's list",
    )
    handler.screenshot(path=artifacts / "3-my-incidents.png", full_page=True)
    row = handler.locator("table.list tbody tr").first
    assert "2" in row.locator("td").nth(3).inner_text()  # asked at level 2
    incident = row.locator("a").get_attribute("href").rsplit("/", 1)[-1]
    row.locator("a").click()
    assert handler.locator("#summary").inner_text() == SEED_CASE["summary"]
    assert "Not acknowledged yet" in handler.locator("#acknowledged-by").inner_text()
    handler.get_by_role("button", name="Acknowledge").click()
    handler.get_by_text("Your acknowledgement is recorded.").wait_for()
    assert handler.locator("#acknowledged-by").inner_text() == "p-zhou"
    assert handler.locator("#status").inner_text() == "acknowledged"
    handler.screenshot(path=artifacts / "4-acknowledged-by-the-hr-head.png", full_page=True)

    # The accused: the same 404 as an unknown incident.
    wang = browser.new_context().new_page()
    sign_in(wang, intake, "dev-wang-token")
    answer = wang.goto(f"{intake}/ui/incidents/{incident}")
    assert answer is not None and answer.status == 404
    assert SEED_CASE["summary"] not in wang.content()
    unknown = wang.goto(f"{intake}/ui/incidents/00000000-0000-4000-8000-000000000000")
    assert unknown is not None and unknown.status == 404

    # The reporter comes back: acknowledged, and writes back.
    page.goto(f"{intake}/ui/receipt")
    page.get_by_label("Receipt").fill(receipt)
    page.get_by_label("Secret").fill(secret)
    page.get_by_role("button", name="Open").click()
    assert page.locator("#status").inner_text() == "acknowledged"
    assert page.locator("#acknowledged").inner_text() != "not yet"
    page.get_by_label("Write to the handlers").fill("Thank you. I can give more details.")
    page.get_by_role("button", name="Send").click()
    page.get_by_text("Your message is sent.").wait_for()
    assert "I can give more details" in page.locator("ul.thread").first.inner_text()
    assert "?" not in page.url and secret not in page.url
    page.screenshot(path=artifacts / "5-reporter-follow-up.png", full_page=True)

    # The auditor: the incident, verified, who knew what and when.
    auditor = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    sign_in(auditor, audit, "dev-auditor-token")
    reload_until(
        auditor,
        lambda p: p.locator(f"a[href='/ui/incidents/{incident}']").count() > 0,
        20,
        "the incident in the auditor's list",
    )
    auditor.screenshot(path=artifacts / "6-auditor-list.png", full_page=True)
    auditor.goto(f"{audit}/ui/incidents/{incident}")
    reload_until(
        auditor,
        lambda p: (
            "Verified" in p.locator("#verified").inner_text()
            and "await" not in p.locator("#verified").inner_text()
        ),
        20,
        "a verified badge covering every entry",
    )
    who = auditor.locator("svg.chart text.who").all_text_contents()
    assert {"reporter", "p-chen", "p-zhou"} <= set(who)
    assert not {"p-wang", "p-li"} & set(who)
    assert auditor.locator("svg.chart .m-acknowledged").count() >= 1
    assert auditor.locator("svg.chart .v-deadline").count() >= 1
    knew = auditor.locator("table.knew").inner_text()
    assert "p-zhou" in knew and "acknowledged" in knew
    assert auditor.locator("#state-status").inner_text() == "acknowledged"
    timeline = auditor.locator("table.timeline").inner_text()
    assert "incident.escalated.v1" in timeline and "incident.access.denied.v1" in timeline
    assert SEED_CASE["description"] not in auditor.content()
    auditor.screenshot(path=artifacts / "7-auditor-incident.png", full_page=True)

    # The as-of slider, back to the first entry: only the reporter knew, nothing was routed.
    auditor.locator("#t").fill("0")
    # (the page's CSP forbids evaluating strings, so wait on the element, not a function)
    expect(auditor.locator("#state-status")).to_have_text("submitted")
    who_then = auditor.locator("svg.chart text.who").all_text_contents()
    assert "p-zhou" not in who_then
    assert "as_of=" in auditor.url
    auditor.screenshot(path=artifacts / "8-auditor-as-of-start.png", full_page=True)
    with auditor.expect_download() as download:
        auditor.get_by_role("link", name="Download the evidence bundle").click()
    saved = artifacts / "evidence.json"
    download.value.save_as(saved)
    assert '"format": "incidents.audit.bundle/v2"' in saved.read_text(encoding="utf-8")


# The console in both languages (issue 22, item 6) --------------------------------------

EN_DATE = re.compile(r"[A-Z][a-z]{2} \d{1,2}, \d{4}, \d{1,2}:\d{2}:\d{2}\s[AP]M UTC")
ZH_DATE = re.compile(r"\d{4}年\d{1,2}月\d{1,2}日 \d{2}:\d{2}:\d{2} UTC")


def localised_date(page: Page, pattern: re.Pattern[str]) -> None:
    """A date on the page is in the page's language, with its machine-readable twin."""
    moment = page.locator("time").first
    assert pattern.fullmatch(moment.inner_text().strip()), moment.inner_text()
    assert re.fullmatch(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", moment.get_attribute("datetime") or ""
    )


def test_the_reporter_and_handler_pages_in_english_and_chinese(
    stack: Stack, browser: Browser, artifacts: Path
) -> None:
    """A reporter whose browser asks for Chinese makes a report (the people search as a
    form step), reads her receipt page and, in a browser without JavaScript, attaches a
    file there. The handler reads the same incident in English, then switches to Chinese
    with the link every page shows; the choice is kept in the `lang` cookie."""
    intake = stack.url("intake")

    zh = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    page = zh.new_page()
    page.goto(f"{intake}/ui/report")
    assert page.locator("html").get_attribute("lang") == "zh-Hans"
    page.get_by_role("heading", name="提交举报").wait_for()
    page.get_by_label("类别").select_option("harassment")
    assert page.get_by_label("类别").locator("option:checked").inner_text() == "骚扰"
    page.locator("#summary").fill("出差时被骚扰")
    page.get_by_label("事情经过").fill("经理在酒店骚扰了我。")
    page.locator("#accused_q").fill("王军")
    page.locator("#accused-people").get_by_role("button", name="搜索").click()
    page.locator("#accused-picks").get_by_label("Wang Jun").check()
    page.screenshot(path=artifacts / "zh-1-report-people-found.png", full_page=True)
    page.get_by_role("button", name="提交举报").click()
    page.get_by_role("heading", name="您的举报已收到").wait_for()
    receipt = page.locator("#receipt").inner_text().strip()
    secret = page.locator("#secret").inner_text().strip()

    page.goto(f"{intake}/ui/receipt")
    page.get_by_label("回执").fill(receipt)
    page.get_by_label("密码").fill(secret)
    page.get_by_role("button", name="打开").click()
    page.get_by_role("heading", name="跟进举报").wait_for()
    assert page.locator("#status").inner_text() in ("已提交", "已分诊", "已升级")
    localised_date(page, ZH_DATE)
    page.screenshot(path=artifacts / "zh-2-receipt-page.png", full_page=True)

    # The upload without JavaScript: a plain multipart form.
    plain = browser.new_context(locale="zh-CN", java_script_enabled=False).new_page()
    plain.goto(f"{intake}/ui/receipt")
    plain.get_by_label("回执").fill(receipt)
    plain.get_by_label("密码").fill(secret)
    plain.get_by_role("button", name="打开").click()
    plain.locator("#evidence").set_input_files(
        {"name": "证据.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.7\n" + b"x" * 4000}
    )
    plain.get_by_role("button", name="上传").click()
    plain.get_by_text("您的文件已上传。").wait_for()
    assert "证据.pdf" in plain.locator("#attachments").inner_text()
    assert "您发送了" in plain.locator("#attachments").inner_text()
    localised_date(plain, ZH_DATE)
    plain.screenshot(path=artifacts / "zh-3-upload-without-javascript.png", full_page=True)

    # The handler at level 1, in English first.
    chen = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    handler = chen.new_page()
    sign_in(handler, intake, "dev-chen-token")
    reload_until(
        handler,
        lambda p: p.get_by_role("cell", name="harassment").count() > 0,
        LEVEL_SECONDS * 4,
        "the harassment report in p-chen's list",
    )
    handler.get_by_role("heading", name="My incidents").wait_for()
    localised_date(handler, EN_DATE)
    handler.get_by_role("cell", name="harassment").locator("xpath=..").locator("a").first.click()
    handler.get_by_role("heading", name=re.compile(r"^Incident ")).wait_for()
    assert handler.locator("#attachments").get_by_text("证据.pdf").count() == 1
    localised_date(handler, EN_DATE)

    handler.locator("nav.languages").get_by_role("link", name=re.compile("中文")).click()
    handler.get_by_role("heading", name=re.compile(r"^事件 ")).wait_for()
    assert handler.locator("html").get_attribute("lang") == "zh-Hans"
    handler.get_by_role("heading", name="举报内容").wait_for()
    assert handler.get_by_role("button", name="确认受理").count() >= 1
    localised_date(handler, ZH_DATE)
    assert {c["name"]: c["value"] for c in chen.cookies()}["lang"] == "zh_Hans"
    handler.screenshot(path=artifacts / "zh-4-handler-incident.png", full_page=True)
    handler.goto(f"{intake}/ui/")
    handler.get_by_role("heading", name="我的事件").wait_for()
    localised_date(handler, ZH_DATE)
    handler.locator("nav.languages").get_by_role("link", name="English").click()
    handler.get_by_role("heading", name="My incidents").wait_for()

"""The console's languages (issue 22, item 6): every string of the pages has a Simplified
Chinese translation with the same placeholders, the catalogs are current with the
templates, the language is negotiated from the switch's cookie and `Accept-Language`,
the switch sets the cookie, and dates are in the reader's language."""

# ruff: noqa: RUF001 (Chinese text uses full-width punctuation)
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.console import i18n
from services.console.web import Console, ConsoleError, error_page, login_router, templates

ROOT = Path(__file__).resolve().parents[2]
ZH = i18n.LOCALE_DIR / "zh_Hans" / "LC_MESSAGES" / "messages.po"


def extracted() -> set[str]:
    """The msgids `make messages` extracts now (babel.cfg), templates and Python alike."""
    with (ROOT / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)  # type: ignore[no-untyped-call]
    keywords = {**DEFAULT_KEYWORDS, "N_": None}
    found = extract_from_dir(ROOT, method_map, options_map, keywords=keywords)
    return {message if isinstance(message, str) else message[0] for _, _, message, *_ in found}


def test_every_string_of_the_pages_has_a_chinese_translation() -> None:
    with ZH.open("rb") as file:
        catalog = read_po(file)
    translated = {
        (m.id if isinstance(m.id, str) else m.id[0]): m.string
        for m in catalog
        if m.id and not m.fuzzy
    }
    needed = extracted()
    assert len(needed) > 200
    missing = sorted(needed - translated.keys())
    assert not missing, f"not in the catalog (run make messages, then translate): {missing}"
    empty = sorted(
        i
        for i in needed
        if not all([translated[i]] if isinstance(translated[i], str) else translated[i] or [""])
    )
    assert not empty, f"no translation: {empty}"
    errors = [(m.id, [str(e) for e in errs]) for m, errs in catalog.check()]
    assert not errors  # the placeholders of each translation are those of its msgid


def test_a_template_string_is_extracted_with_the_jinja_settings() -> None:
    needed = extracted()
    assert "Signed in as <strong>%(principal)s</strong>" in needed  # {% trans %}, trimmed
    assert "Who is accused" in needed  # _() in an expression
    assert "No such incident." in needed  # a ConsoleError's detail
    assert " to %(where)s" in needed  # an N_ mark


@pytest.mark.parametrize(
    ("cookie", "accept", "chosen"),
    [
        (None, None, "en"),
        (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh_Hans"),
        (None, "zh-Hans-CN", "zh_Hans"),
        (None, "zh", "zh_Hans"),
        (None, "en-GB,zh-CN;q=0.5", "en"),
        (None, "fr-FR, de;q=0.9, zh-SG;q=0.2", "zh_Hans"),
        (None, "zh-CN;q=0, en;q=0.1", "en"),
        (None, "fr, *", "en"),
        (None, "x" * 5000, "en"),
        ("zh-Hans", "en", "zh_Hans"),
        ("zh_hans", None, "zh_Hans"),
        ("en", "zh-CN", "en"),
        ("klingon", "zh-CN", "zh_Hans"),
    ],
)
def test_the_language_is_the_cookie_s_else_accept_language_else_english(
    cookie: str | None, accept: str | None, chosen: str
) -> None:
    assert i18n.negotiate(cookie, accept) == chosen


def test_dates_are_in_the_reader_s_language_with_a_machine_readable_time() -> None:
    moment = datetime(2026, 12, 7, 4, 35, 18, tzinfo=UTC)
    assert i18n.when(moment, "en") == (
        '<time datetime="2026-12-07T04:35:18Z">Dec 7, 2026, 4:35:18\u202fAM UTC</time>'
    )
    assert i18n.when("2026-12-07T04:35:18+00:00", "zh_Hans") == (
        '<time datetime="2026-12-07T04:35:18Z">2026年12月7日 04:35:18 UTC</time>'
    )
    assert i18n.when(None, "zh_Hans") == "-"


def test_status_labels_are_said_in_the_reader_s_language() -> None:
    zh = i18n.translations("zh_Hans").gettext
    assert i18n.status_label("escalated to level 2", zh) == "已升级至第 2 级"
    assert i18n.status_label("triaged, level 1 asked", zh) == "已分诊，已通知第 1 级"
    assert i18n.status_rest("acknowledged at the independent level", "acknowledged", zh) == (
        "（独立层级）"
    )
    assert i18n.status_label("escalated (stalled: nobody left to ask)", zh) == (
        "已升级（停滞：已无人可问）"
    )
    assert i18n.status_label("closed with outcome", str) == "closed with outcome"


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    app.state.console = Console(title="Incidents", secure=False, service="intake")
    app.include_router(login_router)
    app.add_exception_handler(ConsoleError, error_page)  # type: ignore[arg-type]
    return TestClient(app)


def test_the_switch_sets_the_cookie_and_the_pages_follow_it(client: TestClient) -> None:
    english = client.get("/ui/login", headers={"Accept-Language": "en-US"})
    assert '<html lang="en">' in english.text and "<h1>Sign in</h1>" in english.text
    assert 'href="/ui/lang/zh-Hans?next=/ui/login"' in english.text  # the switch, no script

    switched = client.get("/ui/lang/zh-Hans", params={"next": "/ui/login"}, follow_redirects=False)
    assert switched.status_code == 303 and switched.headers["location"] == "/ui/login"
    cookie = switched.headers["set-cookie"]
    assert cookie.startswith("lang=zh_Hans;") and "SameSite=lax" in cookie

    chinese = client.get("/ui/login", headers={"Accept-Language": "en-US"})
    assert '<html lang="zh-Hans">' in chinese.text and "<h1>登录</h1>" in chinese.text
    assert chinese.headers["content-language"] == "zh-Hans"
    assert "访问令牌" in chinese.text

    back = client.get(
        "/ui/lang/en", params={"next": "https://evil.example/"}, follow_redirects=False
    )
    assert back.headers["location"] == "/ui/"  # only a console path
    assert "<h1>Sign in</h1>" in client.get("/ui/login").text


def test_without_a_cookie_the_browser_s_language_is_used(client: TestClient) -> None:
    page = client.get("/ui/login", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert "<h1>登录</h1>" in page.text
    refused = client.post(
        "/ui/login",
        content="csrf=x&token=nope",
        headers={"Accept-Language": "zh-CN", "Content-Type": "application/x-www-form-urlencoded"},
        cookies={"incidents-intake-csrf": "y" * 30},
    )
    # a problem shown to a person is in her language (the form's token did not match)
    assert refused.status_code == 403 and "表单已过期" in refused.text


def test_a_fragment_without_a_request_is_english() -> None:
    page = templates.get_template("error.html").render(
        console=Console(title="Incidents", secure=False), title="Not found", detail=None
    )
    assert "<h1>Not found</h1>" in page and 'lang="en"' in page


def test_a_file_named_in_chinese_is_read_from_the_upload_form() -> None:
    """Browsers send a file's name in UTF-8; the form parser once took it for latin-1
    and answered 500."""
    from services.intake.attachments_ui import FormStream

    body = (
        b'--b\r\nContent-Disposition: form-data; name="csrf"\r\n\r\ntok\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="'
        + "证据.pdf".encode()
        + b'"\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.7\n\r\n--b--\r\n'
    )
    events = FormStream(b"b").feed(body)
    assert events[0] == ("field", "csrf", b"tok")
    assert events[1] == ("file", "file", "证据.pdf".encode())
    assert events[2] == ("data", "", b"%PDF-1.7\n") and events[3][0] == "end"

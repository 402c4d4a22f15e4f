"""The console's web plumbing: templates, static files, the login cookie and CSRF checks.

Authentication is the APIs' own: the login page takes a bearer token (a development
token, or an OIDC access token in production), checks it with the service's
`Authenticator`, and keeps it in an HttpOnly, SameSite=Strict cookie (Secure, with the
`__Host-` prefix, outside development). Each page turns that cookie back into an
`Authorization` value and hands it to the same principal and role checks the JSON API
uses. The token is never logged and never put in a page or a URL.

Every form POST carries a CSRF token that must equal the one in a second cookie (double
submit; the `__Host-` prefix keeps a sibling subdomain from planting it), and a request
the browser marks as cross-site (`Sec-Fetch-Site`) is refused as well. Pages answer
`Cache-Control: no-store` and a strict Content-Security-Policy: every asset is served by
the service itself, and the little JavaScript there is lives in `static/console.js`.

Pages are rendered in the reader's language (`language`: the `lang` cookie the switch
at `/ui/lang/<tag>` sets, else `Accept-Language`; see `services.console.i18n`).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from gettext import NullTranslations
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, pass_context
from jinja2.runtime import Context
from markupsafe import Markup

from services.console import i18n
from services.infra.auth import Authenticator
from services.infra.settings import CommonSettings

PREFIX = "/ui"
SESSION_MAX_AGE = 8 * 3600
"""Seconds the login cookie lives (an OIDC token may expire sooner: then log in again)."""
MAX_FORM_FIELDS = 80
"""Fields a form may send (the report form: its fields and up to 50 people picked)."""
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

templates = Environment(
    loader=PackageLoader("services.console", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    extensions=["jinja2.ext.i18n"],
)
templates.policies["ext.i18n.trimmed"] = True
# English by default (a fragment, the benchmark); `render` passes the reader's language.
templates.install_null_translations(newstyle=True)  # type: ignore[attr-defined]
templates.globals["tr"] = str


@pass_context
def when(context: Context, moment: datetime | str | None) -> Markup | str:
    """A time in the page's language, in a `<time datetime=...>` (see i18n.when)."""
    return i18n.when(moment, context.get("lang", i18n.SOURCE))


@pass_context
def when_text(context: Context, moment: datetime | str | None) -> str:
    """`when` without markup (an SVG `<title>`)."""
    return i18n.when_text(moment, context.get("lang", i18n.SOURCE))


@pass_context
def _level_label(context: Context, label: str) -> str:
    return i18n.level_label(label, context["tr"])


@pass_context
def _status_word(context: Context, status: str) -> str:
    return i18n.status_word(status, context["tr"])


@pass_context
def _status_rest(context: Context, label: str, status: str) -> str:
    return i18n.status_rest(label, status, context["tr"])


@pass_context
def _status_label(context: Context, label: str) -> str:
    return i18n.status_label(label, context["tr"])


templates.filters.update(
    when=when,
    when_text=when_text,
    level_label=_level_label,
    status_word=_status_word,
    status_rest=_status_rest,
    status_label=_status_label,
)


def _gettext(translations: NullTranslations) -> tuple[Any, Any]:
    """gettext and ngettext for `{% trans %}` and `_()` (Jinja's newstyle: the
    variables are escaped and put in after translation)."""

    @pass_context
    def gettext(context: Context, message: str, **variables: Any) -> str:
        text = translations.gettext(message)
        # the catalogs are the project's own files, trusted like the templates
        shown = Markup(text) if context.eval_ctx.autoescape else text  # noqa: S704
        return shown % variables

    @pass_context
    def ngettext(context: Context, one: str, many: str, n: int, **variables: Any) -> str:
        variables.setdefault("num", n)
        text = translations.ngettext(one, many, n)
        shown = Markup(text) if context.eval_ctx.autoescape else text  # noqa: S704
        return shown % variables

    return gettext, ngettext


def language(request: Request) -> dict[str, Any]:
    """The template context of the reader's language (see services.console.i18n)."""
    tag = i18n.negotiate(request.cookies.get(i18n.COOKIE), request.headers.get("accept-language"))
    translations = i18n.translations(tag)
    gettext, ngettext = _gettext(translations)
    return {
        "lang": tag,
        "html_lang": i18n.html_lang(tag),
        "languages": [(t, i18n.html_lang(t), i18n.display_name(t)) for t in i18n.languages()],
        "gettext": gettext,
        "_": gettext,
        "ngettext": ngettext,
        "tr": translations.gettext,
    }


@dataclass(frozen=True)
class Console:
    """How one service's console behaves: its name, its cookies, where login leads."""

    title: str
    secure: bool
    service: str = "console"
    """In the cookies' names: services on one host share cookies whatever their port."""
    home: str = PREFIX + "/"

    def _cookie_name(self, what: str) -> str:
        name = f"incidents-{self.service}-{what}"
        return f"__Host-{name}" if self.secure else name

    @property
    def session_cookie(self) -> str:
        return self._cookie_name("session")

    @property
    def csrf_cookie(self) -> str:
        return self._cookie_name("csrf")


class ConsoleError(Exception):
    """An error shown as a console page (the JSON API answers problem+json instead)."""

    def __init__(self, status: int, title: str, detail: str | None = None) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail


class LoginNeeded(Exception):
    """No session, or one whose token is no longer valid: the login page, then back."""


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def signed_in_as(request: Request, principal: str) -> str:
    """Remember who is signed in, so that error pages show it too (and sign out)."""
    request.state.principal = principal
    return principal


def session_authorization(request: Request) -> str | None:
    """The `Authorization` value of the logged-in session, None without a login cookie."""
    token = request.cookies.get(console_of(request).session_cookie)
    return f"Bearer {token}" if token else None


def _csrf(request: Request) -> tuple[str, bool]:
    """The CSRF token of this browser, and whether it is new (must be set as a cookie)."""
    token = request.cookies.get(console_of(request).csrf_cookie)
    if token and 20 <= len(token) <= 100:
        return token, False
    return secrets.token_urlsafe(32), True


def _cookie(response: Response, console: Console, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=console.secure,
        httponly=True,
        samesite="strict",
    )


def secured(response: Response, request: Request, csrf: tuple[str, bool] | None = None) -> Response:
    """The console's headers on a response, and the CSRF cookie when it is new."""
    response.headers.update(SECURITY_HEADERS)
    token, new = csrf or _csrf(request)
    if new:
        _cookie(response, console_of(request), console_of(request).csrf_cookie, token, 86400)
    return response


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page from `templates/`, with the CSRF token its forms need."""
    csrf = _csrf(request)
    context.setdefault("principal", getattr(request.state, "principal", None))
    lang = language(request)
    body = templates.get_template(template).render(
        console=console_of(request), csrf=csrf[0], path=request.url.path, **lang, **context
    )
    response = HTMLResponse(body, status_code=status)
    response.headers["Content-Language"] = lang["html_lang"]
    response.headers["Vary"] = "Accept-Language, Cookie"
    secured(response, request, csrf)
    return response


def fragment(template: str, **context: Any) -> str:
    """A piece of a page (the as-of chart redrawn by the script), without headers."""
    return templates.get_template(template).render(**context)


def redirect(request: Request, to: str) -> Response:
    """303 See Other: after a form POST, and to the login page."""
    return secured(RedirectResponse(to, status_code=303), request)


def to_login(request: Request) -> Response:
    """The login page, coming back here afterwards."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect(request, f"{PREFIX}/login?next={quote(here, safe='')}")


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a urlencoded form POST, after the CSRF checks (403 page otherwise);
    the first value of a field sent several times."""
    return {name: values[0] for name, values in (await read_form_lists(request)).items()}


async def read_form_lists(request: Request) -> dict[str, list[str]]:
    """`read_form` with every value of each field (checkboxes sharing a name)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise ConsoleError(403, "Forbidden", "A form of another site cannot act here.")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise ConsoleError(415, "Unsupported form", "Forms are sent urlencoded.")
    try:
        raw = (await request.body()).decode("utf-8")
        parsed = parse_qs(raw, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise ConsoleError(400, "Bad form", "The form could not be read.") from None
    fields = dict(parsed)
    expected = request.cookies.get(console_of(request).csrf_cookie) or ""
    sent = (fields.pop("csrf", None) or [""])[0]
    if not expected or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise ConsoleError(
            403, "Form expired", "The form's security token did not match; reload the page."
        )
    return fields


def own_navigation(request: Request) -> bool:
    """True for a person's own top-level navigation: the browser's fetch metadata says
    the page is loaded as a document (`Sec-Fetch-Mode: navigate`, `Sec-Fetch-Dest:
    document`) because the person did it (`Sec-Fetch-User: ?1`: a click, the address
    bar), from this site or none. A request another page made (an image, a frame, a
    fetch, a same-site page's script: SameSite=Strict does not stop those) is not one,
    and neither is a request without fetch metadata: a page that records something
    then asks for an explicit open action (a POST form) instead."""
    headers = request.headers
    return (
        headers.get("sec-fetch-mode") == "navigate"
        and headers.get("sec-fetch-user") == "?1"
        and headers.get("sec-fetch-dest", "document") == "document"
        and headers.get("sec-fetch-site") in ("same-origin", "none")
    )


def safe_next(target: str | None, default: str) -> str:
    """A local console path to return to after login; anything else goes home."""
    if target is None or not target.startswith(PREFIX + "/"):
        return default
    return default if any(c in target for c in "\\\r\n") else target


login_router = APIRouter(prefix=PREFIX, include_in_schema=False)


@login_router.get("/login")
async def login_page(request: Request, next: str | None = None) -> Response:
    console = console_of(request)
    return render(request, "login.html", next=safe_next(next, console.home), error=None)


@login_router.post("/login")
async def login(request: Request) -> Response:
    """Check the pasted token with the service's authenticator; keep it in the cookie."""
    console = console_of(request)
    fields = await read_form(request)
    token = fields.get("token", "").strip()
    target = safe_next(fields.get("next"), console.home)
    auth: Authenticator = request.app.state.auth
    principal = await auth.principal_id_async(f"Bearer {token}") if token else None
    if principal is None:
        return render(
            request,
            "login.html",
            status=401,
            next=target,
            error=i18n.N_("This token is not valid (or has expired)."),
        )
    response = redirect(request, target)
    _cookie(response, console, console.session_cookie, token, SESSION_MAX_AGE)
    return response


@login_router.get("/lang/{tag}")
async def switch_language(tag: str, request: Request, next: str | None = None) -> Response:
    """The language switch: a link on every page; remembers the choice in the `lang`
    cookie and goes back to the page (an unknown language: English)."""
    console = console_of(request)
    response = redirect(request, safe_next(next, console.home))
    chosen = i18n.negotiate(tag, None)
    response.set_cookie(
        i18n.COOKIE,
        chosen,
        max_age=i18n.COOKIE_MAX_AGE,
        path="/",
        secure=console.secure,
        httponly=True,
        samesite="lax",
    )
    return response


@login_router.post("/logout")
async def logout(request: Request) -> Response:
    console = console_of(request)
    await read_form(request)
    response = redirect(request, f"{PREFIX}/login")
    response.delete_cookie(
        console.session_cookie, path="/", secure=console.secure, httponly=True, samesite="strict"
    )
    return response


async def error_page(request: Request, exc: ConsoleError) -> Response:
    """A ConsoleError as a page, its title and detail in the reader's language when the
    catalog has them (error.html)."""
    return render(
        request,
        "error.html",
        status=exc.status,
        title=exc.title,
        detail=exc.detail,
        switch_to=console_of(request).home,  # an error page does not name what was asked
    )


def mount(app: FastAPI, pages: APIRouter, settings: CommonSettings, *, title: str) -> None:
    """Serve a service's console pages, the login, the static files, and error pages."""
    app.state.console = Console(
        title=title,
        secure=settings.environment != "development",
        service=app.state.runtime.name,
    )
    app.include_router(login_router)
    app.include_router(pages)
    app.mount(
        f"{PREFIX}/static",
        StaticFiles(packages=[("services.console", "static")]),
        name="console-static",
    )

    app.add_exception_handler(ConsoleError, error_page)  # type: ignore[arg-type]

    @app.exception_handler(LoginNeeded)
    async def _login_needed(request: Request, _: LoginNeeded) -> Response:
        return to_login(request)


def query_string(params: Mapping[str, object]) -> str:
    """`?a=1&b=2` of the parameters that are set (for pagination and filter links)."""
    kept = [(k, str(v)) for k, v in params.items() if v not in (None, "", False)]
    if not kept:
        return ""
    return "?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in kept)


templates.globals["query_string"] = query_string

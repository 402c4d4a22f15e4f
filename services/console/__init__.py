"""The console: server-rendered pages for auditors (audit), handlers and reporters (intake).

Shared here: the Jinja2 templates and static files (`web`), the login cookie and CSRF
checks (`web`), the who-knew chart layout (`chart`, pure) and the content-free
descriptions of ledger events (`chart.describe`). The pages themselves live with their
service (`services.audit.ui`, `services.intake.ui`) and call the same functions as the
JSON API, so authorisation, "viewed before content" and auditing are shared.
"""

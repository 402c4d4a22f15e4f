"""Pure domain code: the event catalog, the incident fold and the rules that decide.

Nothing here performs I/O or imports asyncio, a database or a broker client, so the
services and the audit replay run exactly the same decisions.
"""

"""A transparency-log witness: C2SP tlog-witness over HTTP, its own key and storage.

Runs as `incidents witness` (or `python -m services.witness`), on any machine: it needs
only its state folder (key and SQLite file) and the verifier keys of the logs it
witnesses. It imports nothing from the other services but the pure note, cosignature
and Merkle-proof code in `services.audit` (`checkpoint`, `cosignature`, `merkle`).
"""

#!/usr/bin/env bash
# Creates the missing docker secrets of compose.yaml in deploy/secrets/ (see
# secrets/README.md): random database passwords, the audit signing key and the
# webhook secret of the notices. An
# existing file is never overwritten.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/secrets"
umask 077
chmod 700 .

password() {  # 32 random bytes, URL-safe base64: no character needs quoting anywhere
  openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n'
}

for name in postgres_password db_migrator_password db_intake_password \
  db_triage_password db_escalation_password db_audit_password; do
  if [ ! -e "$name" ]; then
    password > "$name"
    echo "created secrets/$name"
  fi
done

if [ ! -e audit-signing-key.pem ]; then
  # Ed25519, PKCS#8 PEM: what INCIDENTS_SIGNING_KEY_FILE takes.
  openssl genpkey -algorithm ed25519 -out audit-signing-key.pem
  echo "created secrets/audit-signing-key.pem (back it up offline: it is the ledger's identity)"
fi

for key in content-master-key pseudonym-key; do
  if [ ! -e "$key" ]; then
    # 32 random bytes, base64: INCIDENTS_MASTER_KEY_FILE and INCIDENTS_PSEUDONYM_KEY_FILE.
    openssl rand -base64 32 > "$key"
    echo "created secrets/$key (back it up offline, apart from the database backups)"
  fi
done

if [ ! -e notify.env ]; then
  # The key that signs each notice webhook; the receiver needs the same value.
  printf 'INCIDENTS_NOTIFY_WEBHOOK_SECRET=%s\n' "$(openssl rand -hex 32)" > notify.env
  echo "created secrets/notify.env (give the webhook receiver the same secret)"
fi

# Readable by the containers' users; the 0700 folder keeps everyone else out.
chmod 0444 postgres_password db_*_password audit-signing-key.pem content-master-key \
  pseudonym-key

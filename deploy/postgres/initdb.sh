#!/usr/bin/env bash
# Creates the incidents roles and schemas (roles.sql) when the postgres image
# initialises an empty data volume (it runs /docker-entrypoint-initdb.d/* once).
#
# The passwords are docker secrets. psql reads each one itself (\set with a
# backquoted cat), so no password is ever on a command line or in the environment.
set -euo pipefail

SECRETS=${ROLES_SECRETS_DIR:-/run/secrets}
ROLES_SQL=${ROLES_SQL_FILE:-/opt/incidents/roles.sql}

for role in migrator intake triage escalation audit; do
  if [ ! -s "${SECRETS}/db_${role}_password" ]; then
    echo "initdb: ${SECRETS}/db_${role}_password is missing or empty" >&2
    exit 1
  fi
done

{
  for role in migrator intake triage escalation audit; do
    printf '\\set %s_password `cat %s/db_%s_password`\n' "$role" "$SECRETS" "$role"
  done
  cat "$ROLES_SQL"
} | psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" \
    --dbname "${POSTGRES_DB:-incidents}"

#!/usr/bin/env bash
# Creates the missing docker secrets of compose.yaml in deploy/secrets/ (see
# secrets/README.md): random database passwords, the audit signing key, the event
# signing keys and their key set, the Kafka certificates and the webhook secret of the
# notices. An existing file is never overwritten (the key set only gains entries).
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

# Kafka TLS: a private CA, a key and certificate per broker (its host name) and per
# client principal (the CN is the principal the ACLs of deploy/kafka/acls.sh name).
# system-hris is the demo registered system: give each real system its own.
if [ ! -e kafka-ca.key ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=incidents kafka CA" -keyout kafka-ca.key -out kafka-ca.pem 2>/dev/null
  echo "created secrets/kafka-ca.pem and its key (keep the key offline)"
fi
certificate() {  # NAME [HOST]: kafka-NAME.key, kafka-NAME.pem (CN=NAME) and a PEM keystore
  [ -e "kafka-$1.pem" ] && return 0
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "kafka-$1.key" -out "kafka-$1.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\n' "${2:-$1}" > "kafka-$1.ext"
  openssl x509 -req -in "kafka-$1.csr" -CA kafka-ca.pem -CAkey kafka-ca.key -CAcreateserial \
    -days 825 -extfile "kafka-$1.ext" -out "kafka-$1.pem" 2>/dev/null
  cat "kafka-$1.key" "kafka-$1.pem" kafka-ca.pem > "kafka-$1.keystore.pem"
  rm -f "kafka-$1.csr" "kafka-$1.ext"
  echo "created secrets/kafka-$1.pem (principal User:$1)"
}
for broker in kafka-1 kafka-2 kafka-3; do certificate "$broker"; done
for principal in admin intake triage escalation audit system-hris; do certificate "$principal"; done

# Event signing (docs/event-signing.md): an Ed25519 key per service, made once, and the
# key set of their public keys every service checks events against. The key set keeps
# the entries it has (older and revoked keys) and gains the id of any key it lacks, so
# a rotated key (the old file moved away, this script run again) is added beside the
# old one. The format and ids are services/infra/signing.py's (`incidents event-keys`
# makes the same); tests/unit/test_deploy.py loads the result with its loader.
for service in intake triage escalation audit; do
  if [ ! -e "event-key-$service.pem" ]; then
    openssl genpkey -algorithm ed25519 -out "event-key-$service.pem"
    echo "created secrets/event-key-$service.pem (only $service gets it)"
  fi
done
[ -e event-keys.yaml ] || printf 'keys:\n' > event-keys.yaml
chmod u+w event-keys.yaml  # 0444 after a first run
raw_public() {  # the 32 raw bytes of a key's public half (the end of its DER SPKI)
  openssl pkey -in "$1" -pubout -outform DER | tail -c 32
}
for service in intake triage escalation audit; do
  # <service>:<first 16 hex of SHA-256(raw public key)>
  id="$service:$(raw_public "event-key-$service.pem" | openssl dgst -sha256 -r | cut -c1-16)"
  if ! grep -q "^- id: $id\$" event-keys.yaml; then
    printf -- '- id: %s\n  service: %s\n  public_key: %s\n  revoked: false\n' "$id" "$service" \
      "$(raw_public "event-key-$service.pem" | openssl base64 -A)" >> event-keys.yaml
    echo "added $id to secrets/event-keys.yaml"
  fi
done

if [ ! -e notify.env ]; then
  # The key that signs each notice webhook; the receiver needs the same value.
  printf 'INCIDENTS_NOTIFY_WEBHOOK_SECRET=%s\n' "$(openssl rand -hex 32)" > notify.env
  echo "created secrets/notify.env (give the webhook receiver the same secret)"
fi

# Readable by the containers' users; the 0700 folder keeps everyone else out.
chmod 0444 postgres_password db_*_password audit-signing-key.pem content-master-key \
  pseudonym-key kafka-*.pem kafka-*.key event-key-*.pem event-keys.yaml
chmod 0400 kafka-ca.key

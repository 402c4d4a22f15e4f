#!/bin/sh
# GENERATED from services/domain/topology.py: do not edit; after a change run
#   .venv/bin/python -m tests.unit.test_broker_security
# Grants each service principal (User:<service>, the CN of its client certificate)
# exactly the topics it owns and consumes, and each registered system given as an
# argument (User:system-hris ...) incident.inbound to write and
# incident.inbound.results to read. The broker denies everything else
# (allow.everyone.if.no.acl.found=false). Run with an admin principal:
#   BOOTSTRAP=kafka-1:9092 ADMIN_CONFIG=admin.properties acls.sh User:system-hris
set -eu
acls() {
  kafka-acls.sh --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_CONFIG" "$@"
}
acls --add --allow-principal User:intake --operation Read --operation Describe --topic incident.inbound
acls --add --allow-principal User:intake --operation Write --operation Describe --topic incident.reports
acls --add --allow-principal User:intake --operation Read --operation Describe --topic incident.triage
acls --add --allow-principal User:intake --operation Write --operation Read --operation Describe --topic incident.activity
acls --add --allow-principal User:intake --operation Read --operation Describe --topic incident.escalations
acls --add --allow-principal User:intake --operation Write --operation Describe --topic directory.changes
acls --add --allow-principal User:intake --operation Write --operation Describe --topic incident.deadletter
acls --add --allow-principal User:intake --operation Describe --topic audit.checkpoints
acls --add --allow-principal User:intake --operation Write --operation Describe --topic incident.inbound.results
acls --add --allow-principal User:intake --operation Create --operation Write --operation Read --operation Describe --topic _incidents.alive.intake
acls --add --allow-principal User:intake --operation Read --operation Describe --group intake --resource-pattern-type prefixed
acls --add --allow-principal User:triage --operation Describe --topic incident.inbound
acls --add --allow-principal User:triage --operation Read --operation Describe --topic incident.reports
acls --add --allow-principal User:triage --operation Write --operation Describe --topic incident.triage
acls --add --allow-principal User:triage --operation Write --operation Read --operation Describe --topic incident.activity
acls --add --allow-principal User:triage --operation Describe --topic incident.escalations
acls --add --allow-principal User:triage --operation Read --operation Describe --topic directory.changes
acls --add --allow-principal User:triage --operation Write --operation Describe --topic incident.deadletter
acls --add --allow-principal User:triage --operation Describe --topic audit.checkpoints
acls --add --allow-principal User:triage --operation Describe --topic incident.inbound.results
acls --add --allow-principal User:triage --operation Create --operation Write --operation Read --operation Describe --topic _incidents.alive.triage
acls --add --allow-principal User:triage --operation Read --operation Describe --group triage --resource-pattern-type prefixed
acls --add --allow-principal User:triage --operation All --topic triage- --resource-pattern-type prefixed
acls --add --allow-principal User:escalation --operation Describe --topic incident.inbound
acls --add --allow-principal User:escalation --operation Read --operation Describe --topic incident.reports
acls --add --allow-principal User:escalation --operation Read --operation Describe --topic incident.triage
acls --add --allow-principal User:escalation --operation Write --operation Read --operation Describe --topic incident.activity
acls --add --allow-principal User:escalation --operation Write --operation Describe --topic incident.escalations
acls --add --allow-principal User:escalation --operation Read --operation Describe --topic directory.changes
acls --add --allow-principal User:escalation --operation Write --operation Describe --topic incident.deadletter
acls --add --allow-principal User:escalation --operation Describe --topic audit.checkpoints
acls --add --allow-principal User:escalation --operation Describe --topic incident.inbound.results
acls --add --allow-principal User:escalation --operation Create --operation Write --operation Read --operation Describe --topic _incidents.alive.escalation
acls --add --allow-principal User:escalation --operation Read --operation Describe --group escalation --resource-pattern-type prefixed
acls --add --allow-principal User:escalation --operation All --topic escalation- --resource-pattern-type prefixed
acls --add --allow-principal User:audit --operation Describe --topic incident.inbound
acls --add --allow-principal User:audit --operation Read --operation Describe --topic incident.reports
acls --add --allow-principal User:audit --operation Read --operation Describe --topic incident.triage
acls --add --allow-principal User:audit --operation Write --operation Read --operation Describe --topic incident.activity
acls --add --allow-principal User:audit --operation Read --operation Describe --topic incident.escalations
acls --add --allow-principal User:audit --operation Read --operation Describe --topic directory.changes
acls --add --allow-principal User:audit --operation Write --operation Read --operation Describe --topic incident.deadletter
acls --add --allow-principal User:audit --operation Write --operation Read --operation Describe --topic audit.checkpoints
acls --add --allow-principal User:audit --operation Read --operation Describe --topic incident.inbound.results
acls --add --allow-principal User:audit --operation Create --operation Write --operation Read --operation Describe --topic _incidents.alive.audit
acls --add --allow-principal User:audit --operation Read --operation Describe --group audit --resource-pattern-type prefixed
for system in "$@"; do
  acls --add --allow-principal "$system" --operation Write --operation Describe --topic incident.inbound
  acls --add --allow-principal "$system" --operation Read --operation Describe --topic incident.inbound.results
  acls --add --allow-principal "$system" --operation Read --operation Describe --group "${system#User:}-" --resource-pattern-type prefixed
done

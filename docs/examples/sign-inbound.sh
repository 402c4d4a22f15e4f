#!/bin/sh
# Sign an inbound event (docs/inbound.md) with jq and openssl 3: the unsigned event on
# stdin, the signed event (canonical JSON) on stdout. KEY: the PEM private key file,
# KEY_ID: its registered key id.
set -e
input=$(mktemp)
unsigned=$(jq -cS --arg kid "$KEY_ID" '. + {signingkey: $kid} | del(.signature)')
{ printf 'incidents-event-signature/v1\n'; printf '%s' "$unsigned"; } > "$input"
signature=$(openssl pkeyutl -sign -rawin -inkey "$KEY" -in "$input" | base64 -w0)
rm -f "$input"
printf '%s' "$unsigned" | jq -cS --arg sig "$signature" '. + {signature: $sig}'

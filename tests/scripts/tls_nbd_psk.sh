#!/bin/bash
# NBD over TLS with a pre-shared key: nbdkit --tls=require --tls-psk=FILE; a client with the same
# key (tls-psk-file=) writes and reads the export byte for byte, one with another key is refused,
# and so is one without TLS.
#
#   tests/scripts/tls_nbd_psk.sh local
#   tests/scripts/tls_nbd_psk.sh s3   (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
mode=${1:-local}
TEST_NAME="tls_nbd_psk[$mode]"
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/tls_lib.sh"
use_store "$mode" tls

log "NBD over TLS with a pre-shared key"
printf 'alice:%s\n' "$(openssl rand -hex 32)" >"$work/keys.psk"
printf 'alice:%s\n' "$(openssl rand -hex 32)" >"$work/wrong.psk"
chmod 0600 "$work/keys.psk" "$work/wrong.psk"
start_nbdkit --tls=require "--tls-psk=$work/keys.psk" "$plugin" "${store_params[@]}" size=16M
roundtrip "nbds+unix://alice@/psk?socket=$sock&tls-psk-file=$work/keys.psk" ||
  die "a client with the right PSK cannot write and read the export"
refused "nbds+unix://alice@/psk?socket=$sock&tls-psk-file=$work/wrong.psk" \
  "a client with the wrong PSK connected"
refused "nbd+unix:///psk?socket=$sock" "a client without TLS was served by nbdkit --tls=require --tls-psk"
stop_nbdkit
log "PSK: the right key round-tripped; a wrong key and no TLS refused"
log "PASS"

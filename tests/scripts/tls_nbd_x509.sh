#!/bin/bash
# NBD over TLS with X.509 certificates: nbdkit --tls=require with a server certificate signed by a
# private CA made here; a client given the CA (nbds://localhost...?tls-certificates=DIR) writes
# and reads the export byte for byte; a client without TLS is refused, and so is a TLS client
# that does not trust the CA (its error mentions the certificate).
#
#   tests/scripts/tls_nbd_x509.sh local
#   tests/scripts/tls_nbd_x509.sh s3   (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout); TLS_PORT (default: a free port
# from 9600-9699; nbdkit's TCP port).
set -euo pipefail
mode=${1:-local}
TEST_NAME="tls_nbd_x509[$mode]"
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/tls_lib.sh"
use_store "$mode" tls
nbd_port=${TLS_PORT:-$(free_ports 1)}
make_certs

# Over TCP to "localhost": libnbd checks the certificate's chain and host name only when it
# connects to a host name (over a unix socket it has none to check).
log "NBD over TLS with X.509 certificates"
start_nbdkit -p "$nbd_port" -i 127.0.0.1 --tls=require "--tls-certificates=$certs" \
  "$plugin" "${store_params[@]}" size=16M
roundtrip "nbds://localhost:$nbd_port/x509?tls-certificates=$certs" ||
  die "a TLS client that trusts the CA cannot write and read the export"
refused "nbd://localhost:$nbd_port/x509" "a client without TLS was served by nbdkit --tls=require"
refused "nbds://localhost:$nbd_port/x509?tls-certificates=$other" \
  "a TLS client that does not trust the server's CA connected"
grep -qi 'certificate' "$work/refused.out" || die "the untrusting client's error does not mention the certificate"
stop_nbdkit
log "X.509: the trusting client round-tripped $(stat -c %s "$work/image") bytes; plain and untrusting clients refused"
log "PASS"

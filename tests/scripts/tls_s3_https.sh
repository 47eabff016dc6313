#!/bin/bash
# HTTPS to S3: tests/faultproxy/faultproxy.py terminates TLS, with a certificate signed by a
# private CA made here, in front of the S3 test server. Without ca-file= nbdkit refuses to start,
# with a message about the certificate; https:// to the S3 server's plain-HTTP port is refused at
# once (not retried), saying to use http://; with ca-file=CA nbdkit serves and data round-trips,
# and s3block lists and deletes over HTTPS. Every request went through the proxy, and over HTTPS
# every one says UNSIGNED-PAYLOAD (TLS protects the body) and was accepted.
#
#   tests/scripts/tls_s3_https.sh     (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout); TLS_PORT (default: two free ports
# from 9600-9699; the HTTPS proxy, TLS_PORT+1 its control port).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/tls_lib.sh"
require_built "$admin"
require_tool curl
require_s3_env
prefix=tls-$$-$(date +%s)
make_certs

log "HTTPS to S3 through a server with a certificate of the private CA"
start_faultproxy ${TLS_PORT:+-p "$TLS_PORT"} --tls-cert "$certs/server-cert.pem" --tls-key "$certs/server-key.pem"
https_args=("store=s3://$S3BLOCK_TEST_S3_BUCKET/$prefix-https" "endpoint=https://127.0.0.1:$proxy_port"
  "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" "secret-key=$S3BLOCK_TEST_S3_SECRET_KEY" retry-timeout=5)

# Without the CA: refused at start-up, with a message about the certificate.
rc=0
timeout 60 nbdkit -f -U "$sock" -P "$work/noca.pid" "$plugin" "${https_args[@]}" \
  </dev/null >"$work/noca.log" 2>&1 || rc=$?
cat "$work/noca.log"
[ $rc -ne 0 ] && [ $rc -ne 124 ] || die "nbdkit without ca-file= did not refuse the unknown CA (exit $rc)"
[ ! -s "$work/noca.pid" ] || die "nbdkit without ca-file= started serving"
grep -qi 'certificate' "$work/noca.log" || die "the refusal does not mention the certificate"

# https:// to the S3 server's own port, which speaks plain HTTP: refused at once (not retried
# for the retry-timeout), with a message that says what to give instead.
rc=0
timeout 60 nbdkit -f -U "$sock" -P "$work/plain.pid" "$plugin" "${https_args[@]:0:1}" \
  "endpoint=https://${S3BLOCK_TEST_S3_ENDPOINT#http://}" "${https_args[@]:2}" \
  </dev/null >"$work/plain.log" 2>&1 || rc=$?
cat "$work/plain.log"
[ $rc -ne 0 ] && [ $rc -ne 124 ] || die "nbdkit with https:// to a plain-HTTP port did not refuse (exit $rc)"
[ ! -s "$work/plain.pid" ] || die "nbdkit with https:// to a plain-HTTP port started serving"
grep -q 'give the endpoint as http://' "$work/plain.log" || die "the refusal does not say to use http://"
! grep -q 'gave up after' "$work/plain.log" || die "https:// to a plain-HTTP port was retried"

start_nbdkit "$plugin" "${https_args[@]}" "ca-file=$certs/ca-cert.pem" size=16M cache=false
roundtrip "nbd+unix:///https?socket=$sock" || die "nbdkit with ca-file= cannot write and read over HTTPS"
stop_nbdkit
# Listing and deleting (ListObjectsV2, DeleteObjects) over HTTPS, with the admin command.
s3b_https() {
  AWS_SECRET_ACCESS_KEY=$S3BLOCK_TEST_S3_SECRET_KEY "$admin" \
    --store "s3://$S3BLOCK_TEST_S3_BUCKET/$prefix-https" --endpoint "https://127.0.0.1:$proxy_port" \
    --ca-file "$certs/ca-cert.pem" --access-key "$S3BLOCK_TEST_S3_ACCESS_KEY" "$@" </dev/null
}
s3b_https list | grep -q '^https ' || die "s3block over HTTPS does not list the export written"
s3b_https delete https --yes >/dev/null || die "s3block over HTTPS cannot delete the export"
s3b_https list --json | grep -q '"name": "https"' && die "the export deleted over HTTPS is still listed"
# The data went through the HTTPS proxy to the real server.
stats=$(ctl stats)
field() { $py -c "import json,sys; d=json.load(sys.stdin); print(d$1)" <<<"$stats"; }
reqs=$(field "['forwarded']")
[ "$reqs" -gt 0 ] || die "no request went through the HTTPS endpoint"
# Over HTTPS the body is not hashed into the signature (TLS protects it): every request says
# UNSIGNED-PAYLOAD, and the server accepted them (the data round-tripped above).
unsigned=$(field "['payload']['unsigned']")
hashed=$(field "['payload']['sha256']")
total=$(field "['requests']")
[ "$hashed" -eq 0 ] && [ "$unsigned" -eq "$total" ] ||
  die "over HTTPS, $hashed requests carried a SHA-256 of their body and $unsigned of $total UNSIGNED-PAYLOAD"
log "HTTPS: refused without the CA, $reqs requests served with ca-file=, all with UNSIGNED-PAYLOAD"
log "PASS"

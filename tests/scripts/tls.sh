#!/bin/bash
# Transport security, end to end with keys and certificates made here with openssl:
#
#  NBD over TLS: nbdkit --tls=require with
#   - X.509: a private CA signs the server's certificate; a client given the CA
#     (nbds+unix://...?tls-certificates=DIR) writes and reads the export byte for byte; a client
#     without TLS is refused, and so is a TLS client that does not trust the CA;
#   - PSK: nbdkit --tls-psk=FILE; a client with the same key (tls-psk-file=) works, one with
#     another key is refused.
#  HTTPS to S3 (S3 mode only): tests/faultproxy/faultproxy.py terminates TLS with a certificate
#   signed by the private CA in front of the S3 server. Without ca-file= nbdkit refuses to start
#   with a message about the certificate; with ca-file=CA it serves, and data round-trips.
#   https:// to the S3 server's plain-HTTP port is refused at once, saying to use http://.
#
#   tests/scripts/tls.sh local
#   tests/scripts/tls.sh s3      (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout); TLS_PORT (default: three free
# ports from 9600-9699; the HTTPS proxy, TLS_PORT+1 its control port, TLS_PORT+2 nbdkit's TCP port
# for the X.509 test).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${S3BLOCK_BUILD:-$repo/build}
plugin=$build/nbdkit-s3block-plugin.so
mode=${1:-local}

log() { echo "tls[$mode]: $(date +%H:%M:%S) $*"; }
die() { echo "tls[$mode]: FAILED: $*" >&2; exit 1; }
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
[ -f "$plugin" ] || die "no $plugin (build first)"
for tool in nbdkit nbdcopy nbdinfo openssl cmp; do command -v $tool >/dev/null || die "$tool is not installed"; done
port=${TLS_PORT:-$(free_ports 3)}
nbd_port=$((port + 2))

work=$(mktemp -d /tmp/s3block-tls.XXXXXX)
sock=$work/nbd.sock
nbdkit_pid=
proxy_pid=
cleanup() {
  local rc=$?
  if [ -n "$nbdkit_pid" ]; then kill "$nbdkit_pid" 2>/dev/null || true; wait "$nbdkit_pid" 2>/dev/null || true; fi
  if [ -n "$proxy_pid" ]; then kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; fi
  show_nbdkit_log_on_failure "$rc" "$work/nbdkit.log"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_nbdkit() {  # NBDKIT_OPTIONS... -- PLUGIN_PARAMS...  (listens on $sock unless -p is given)
  local opts=()
  while [ "$1" != -- ]; do opts+=("$1"); shift; done
  shift
  case " ${opts[*]} " in *" -p "*) ;; *) opts+=(-U "$sock") ;; esac
  rm -f "$work/nbdkit.pid" "$sock"
  echo "\$ nbdkit ${opts[*]} $plugin $*" >>"$work/nbdkit.log"
  nbdkit -f -P "$work/nbdkit.pid" "${opts[@]}" "$plugin" "$@" \
    </dev/null >>"$work/nbdkit.log" 2>&1 &
  nbdkit_pid=$!
  wait_for_file "$work/nbdkit.pid" 60 || die "nbdkit did not start"
}

case "$mode" in
local) store_args=("store=$work/store") ;;
s3)
  require_s3_env
  prefix=tls-$$-$(date +%s)
  store_args=("store=s3://$S3BLOCK_TEST_S3_BUCKET/$prefix" "endpoint=$S3BLOCK_TEST_S3_ENDPOINT"
    "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" "secret-key=$S3BLOCK_TEST_S3_SECRET_KEY")
  ;;
*) die "usage: $0 local|s3" ;;
esac

# --- Keys and certificates: a private CA, a server certificate for 127.0.0.1 and localhost signed
# by it, and a second CA nobody uses to sign anything (an untrusting client). ---
certs=$work/certs
other=$work/other-ca
mkdir -p "$certs" "$other"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=s3block test CA" \
  -keyout "$work/ca-key.pem" -out "$certs/ca-cert.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout "$certs/server-key.pem" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$certs/ca-cert.pem" -CAkey "$work/ca-key.pem" \
  -CAcreateserial -days 2 -extfile "$work/ext.cnf" -out "$certs/server-cert.pem" 2>/dev/null
chmod 0600 "$certs/server-key.pem"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=another CA" \
  -keyout "$work/other-key.pem" -out "$other/ca-cert.pem" 2>/dev/null
head -c $((3 * 1024 * 1024 + 4321)) /dev/urandom >"$work/image"

# Copies the image into the export and back out through URI and compares.
roundtrip() {
  local uri=$1 out=$work/out.img
  nbdcopy "$work/image" "$uri" || return 1
  rm -f "$out"
  nbdcopy "$uri" "$out" || return 1
  cmp -n "$(stat -c %s "$work/image")" "$work/image" "$out" || return 1
}

# Over TCP to "localhost": libnbd checks the certificate's chain and host name only when it
# connects to a host name (over a unix socket it has none to check).
log "NBD over TLS with X.509 certificates"
start_nbdkit -p "$nbd_port" -i 127.0.0.1 --tls=require "--tls-certificates=$certs" -- \
  "${store_args[@]}" size=16M
roundtrip "nbds://localhost:$nbd_port/x509?tls-certificates=$certs" ||
  die "a TLS client that trusts the CA cannot write and read the export"
if nbdinfo "nbd://localhost:$nbd_port/x509" >"$work/plain.out" 2>&1; then
  die "a client without TLS was served by nbdkit --tls=require"
fi
if nbdinfo "nbds://localhost:$nbd_port/x509?tls-certificates=$other" >"$work/untrusted.out" 2>&1; then
  die "a TLS client that does not trust the server's CA connected"
fi
grep -qi 'certificate' "$work/untrusted.out" || die "the untrusting client's error does not mention the certificate"
stop_nbdkit
log "X.509: the trusting client round-tripped $(stat -c %s "$work/image") bytes; plain and untrusting clients refused"

log "NBD over TLS with a pre-shared key"
printf 'alice:%s\n' "$(openssl rand -hex 32)" >"$work/keys.psk"
printf 'alice:%s\n' "$(openssl rand -hex 32)" >"$work/wrong.psk"
chmod 0600 "$work/keys.psk" "$work/wrong.psk"
start_nbdkit --tls=require "--tls-psk=$work/keys.psk" -- "${store_args[@]}" size=16M
roundtrip "nbds+unix://alice@/psk?socket=$sock&tls-psk-file=$work/keys.psk" ||
  die "a client with the right PSK cannot write and read the export"
if nbdinfo "nbds+unix://alice@/psk?socket=$sock&tls-psk-file=$work/wrong.psk" >"$work/wrong.out" 2>&1; then
  die "a client with the wrong PSK connected"
fi
if nbdinfo "nbd+unix:///psk?socket=$sock" >"$work/plain.out" 2>&1; then
  die "a client without TLS was served by nbdkit --tls=require --tls-psk"
fi
stop_nbdkit
log "PSK: the right key round-tripped; a wrong key and no TLS refused"

[ "$mode" = s3 ] || { log "PASS"; exit 0; }

log "HTTPS to S3 through a server with a certificate of the private CA"
python3 "$repo/tests/faultproxy/faultproxy.py" --listen "$port" --control $((port + 1)) \
  --upstream "$S3BLOCK_TEST_S3_ENDPOINT" --tls-cert "$certs/server-cert.pem" \
  --tls-key "$certs/server-key.pem" --ready-file "$work/proxy.ready" >"$work/proxy.log" 2>&1 &
proxy_pid=$!
wait_for_file "$work/proxy.ready" 20 || die "the HTTPS proxy did not start"
https_args=("store=s3://$S3BLOCK_TEST_S3_BUCKET/$prefix-https" "endpoint=https://127.0.0.1:$port"
  "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" "secret-key=$S3BLOCK_TEST_S3_SECRET_KEY" retry-timeout=5)

# Without the CA: refused at start-up, with a message about the certificate.
rm -f "$work/nbdkit.pid"
rc=0
timeout 60 nbdkit -f -U "$sock" -P "$work/nbdkit.pid" "$plugin" "${https_args[@]}" \
  </dev/null >"$work/noca.log" 2>&1 || rc=$?
cat "$work/noca.log"
[ $rc -ne 0 ] && [ $rc -ne 124 ] || die "nbdkit without ca-file= did not refuse the unknown CA (exit $rc)"
[ ! -s "$work/nbdkit.pid" ] || die "nbdkit without ca-file= started serving"
grep -qi 'certificate' "$work/noca.log" || die "the refusal does not mention the certificate"

# https:// to the S3 server's own port, which speaks plain HTTP: refused at once (not retried
# for the retry-timeout), with a message that says what to give instead.
rm -f "$work/nbdkit.pid"
rc=0
timeout 60 nbdkit -f -U "$sock" -P "$work/nbdkit.pid" "$plugin" "${https_args[@]:0:1}" \
  "endpoint=https://${S3BLOCK_TEST_S3_ENDPOINT#http://}" "${https_args[@]:2}" \
  </dev/null >"$work/plain.log" 2>&1 || rc=$?
cat "$work/plain.log"
[ $rc -ne 0 ] && [ $rc -ne 124 ] || die "nbdkit with https:// to a plain-HTTP port did not refuse (exit $rc)"
[ ! -s "$work/nbdkit.pid" ] || die "nbdkit with https:// to a plain-HTTP port started serving"
grep -q 'give the endpoint as http://' "$work/plain.log" || die "the refusal does not say to use http://"
! grep -q 'gave up after' "$work/plain.log" || die "https:// to a plain-HTTP port was retried"

start_nbdkit -- "${https_args[@]}" "ca-file=$certs/ca-cert.pem" size=16M cache=false
roundtrip "nbd+unix:///https?socket=$sock" || die "nbdkit with ca-file= cannot write and read over HTTPS"
stop_nbdkit
# Listing and deleting (ListObjectsV2, DeleteObjects) over HTTPS, with the admin command.
s3b_https() {
  AWS_SECRET_ACCESS_KEY=$S3BLOCK_TEST_S3_SECRET_KEY "$build/s3block" \
    --store "s3://$S3BLOCK_TEST_S3_BUCKET/$prefix-https" --endpoint "https://127.0.0.1:$port" \
    --ca-file "$certs/ca-cert.pem" --access-key "$S3BLOCK_TEST_S3_ACCESS_KEY" "$@" </dev/null
}
s3b_https list | grep -q '^https ' || die "s3block over HTTPS does not list the export written"
s3b_https delete https --yes >/dev/null || die "s3block over HTTPS cannot delete the export"
s3b_https list --json | grep -q '"name": "https"' && die "the export deleted over HTTPS is still listed"
# The data went through the HTTPS proxy to the real server.
stats=$(curl -sf "http://127.0.0.1:$((port + 1))/stats")
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)" <<<"$stats"; }
reqs=$(field "['forwarded']")
[ "$reqs" -gt 0 ] || die "no request went through the HTTPS endpoint"
# Over HTTPS the body is not hashed into the signature (TLS protects it): every request says
# UNSIGNED-PAYLOAD, and the server accepted them (the data round-tripped above).
unsigned=$(field "['payload']['unsigned']")
hashed=$(field "['payload']['sha256']")
[ "$hashed" -eq 0 ] && [ "$unsigned" -eq "$(field "['requests']")" ] ||
  die "over HTTPS, $hashed requests carried a SHA-256 of their body and $unsigned of $(field "['requests']") UNSIGNED-PAYLOAD"
log "HTTPS: refused without the CA, $reqs requests served with ca-file=, all with UNSIGNED-PAYLOAD"
log "PASS"

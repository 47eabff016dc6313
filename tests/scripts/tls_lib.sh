# Shared by the tls_*.sh tests (sourced after testlib.sh): keys and certificates made here with
# openssl, and a round trip of an image through an NBD URI.

require_built "$plugin"
require_tool nbdkit nbdcopy nbdinfo openssl cmp

# make_certs: a private CA ($certs/ca-cert.pem), a server certificate for 127.0.0.1 and localhost
# signed by it ($certs/server-{cert,key}.pem), and a second CA nobody uses to sign anything, for
# an untrusting client ($other/ca-cert.pem).
make_certs() {
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
}

head -c $((3 * 1024 * 1024 + 4321)) /dev/urandom >"$work/image"
# roundtrip URI: copies the image into the export and back out through URI and compares.
roundtrip() {
  local uri=$1 out=$work/out.img
  nbdcopy "$work/image" "$uri" || return 1
  rm -f "$out"
  nbdcopy "$uri" "$out" || return 1
  cmp -n "$(stat -c %s "$work/image")" "$work/image" "$out" || return 1
}

# refused URI WHAT: dies with "WHAT" if nbdinfo is served at URI; its error stays in
# $work/refused.out for a check of why.
refused() {
  if nbdinfo "$1" >"$work/refused.out" 2>&1; then die "$2"; fi
}

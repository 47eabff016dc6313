#!/usr/bin/env bash
# s3_server.sh - a real S3 server (Ceph RADOS Gateway, one-node memstore cluster) on 127.0.0.1
# for the S3 tests, with a bucket ready to use.
#
# Usage:
#   s3_server.sh start DIR PORT    # prints "export S3BLOCK_TEST_S3_...=..." lines on stdout
#   s3_server.sh stop DIR PORT     # PORT is accepted for symmetry and ignored
#
#   eval "$(tests/scripts/s3_server.sh start /tmp/s3block-rgw 9300)"
#   ... run the tests ...
#   tests/scripts/s3_server.sh stop /tmp/s3block-rgw 9300
#
# start brings the gateway up with rgw-local.sh (beside this file; it installs the Debian
# packages ceph-mon ceph-osd radosgw ceph-common on first use), creates the bucket
# $S3BLOCK_TEST_S3_BUCKET (default s3block-test) and prints the variables the tests read:
# S3BLOCK_TEST_S3_ENDPOINT, S3BLOCK_TEST_S3_BUCKET, S3BLOCK_TEST_S3_ACCESS_KEY,
# S3BLOCK_TEST_S3_SECRET_KEY, S3BLOCK_TEST_S3_REGION and S3BLOCK_TEST_S3_DIR. Progress goes to
# stderr. Exit status non-zero (nothing left running) if the server or the bucket cannot be made.
# The monitor uses PORT+1; keep PORT outside 6800-7300 (the OSD's range).
# stop ends the daemons that start recorded in DIR and removes DIR's cluster state.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ACCESS_KEY=${S3BLOCK_TEST_S3_ACCESS_KEY_WANTED:-s3block-test-key}
SECRET_KEY=${S3BLOCK_TEST_S3_SECRET_KEY_WANTED:-s3block-test-secret}
BUCKET=${S3BLOCK_TEST_S3_BUCKET_WANTED:-s3block-test}
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

usage() { sed -n '2,/^set -/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
MODE=$1
DIR=$2
case "$DIR" in /*) ;; *) DIR="$(pwd)/$DIR" ;; esac

case "$MODE" in
start)
    [ $# -ge 3 ] || usage
    PORT=$3
    mkdir -p "$DIR"
    "$HERE/rgw-local.sh" start "$DIR" "$PORT" "$ACCESS_KEY" "$SECRET_KEY" >&2
    ENDPOINT="http://127.0.0.1:$PORT"
    code=$(curl -s -o "$DIR/create-bucket.out" -w '%{http_code}' --max-time 30 -X PUT \
        --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
        -H "x-amz-content-sha256: $EMPTY_SHA256" "$ENDPOINT/$BUCKET") || code=000
    if [ "$code" != 200 ]; then
        echo "s3_server: creating bucket $BUCKET at $ENDPOINT failed (HTTP $code):" >&2
        cat "$DIR/create-bucket.out" >&2 || true
        "$HERE/rgw-local.sh" stop "$DIR" >&2 || true
        exit 1
    fi
    echo "s3_server: bucket $BUCKET ready at $ENDPOINT" >&2
    echo "export S3BLOCK_TEST_S3_ENDPOINT=$ENDPOINT"
    echo "export S3BLOCK_TEST_S3_BUCKET=$BUCKET"
    echo "export S3BLOCK_TEST_S3_ACCESS_KEY=$ACCESS_KEY"
    echo "export S3BLOCK_TEST_S3_SECRET_KEY=$SECRET_KEY"
    echo "export S3BLOCK_TEST_S3_REGION=us-east-1"
    echo "export S3BLOCK_TEST_S3_DIR=$DIR"
    ;;
stop)
    "$HERE/rgw-local.sh" stop "$DIR" >&2
    rm -rf "${DIR:?}/mon.a" "$DIR/osd.0" "$DIR/osd.0.block" "$DIR/mgr.x" "$DIR/client.rgw.local" \
        "$DIR/run" "$DIR/crash" "$DIR/monmap" "$DIR/keyring" "$DIR/user.json" "$DIR/create-bucket.out"
    ;;
*) usage ;;
esac

#!/bin/bash
# The admin command's verify: a sound export passes, and a block damaged behind the store's back
# (cut short in the directory, or replaced on S3 by a PUT of 5 bytes with curl) is found: exit 3,
# the block named, and the summary counting one problem.
#
#   tests/scripts/admin_cli_verify.sh local
#   tests/scripts/admin_cli_verify.sh s3   (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout). Exits 0 when every check passes.
set -euo pipefail
mode=${1:-local}
TEST_NAME="admin_cli_verify[$mode]"
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/admin_cli_lib.sh"

import_disk
log "verify finds damage made behind its back"
s3b verify disk >/dev/null 2>&1 || die "verify of a sound export failed"
if [ "$mode" = local ]; then
  truncate -s 100 "$store/exports/disk/blocks/7"
else
  require_tool curl
  key="${store#s3://$S3BLOCK_TEST_S3_BUCKET/}/exports/disk/blocks/7"
  printf 'short' >"$work/short"
  curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3BLOCK_TEST_S3_ACCESS_KEY:$S3BLOCK_TEST_S3_SECRET_KEY" \
    -H "x-amz-content-sha256: $(sha256sum "$work/short" | cut -d' ' -f1)" -H "Content-Type: application/octet-stream" \
    -T "$work/short" -H "Expect:" "$S3BLOCK_TEST_S3_ENDPOINT/$S3BLOCK_TEST_S3_BUCKET/$key" >/dev/null 2>&1 \
  || curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3BLOCK_TEST_S3_ACCESS_KEY:$S3BLOCK_TEST_S3_SECRET_KEY" \
    -H "x-amz-content-sha256: $(sha256sum "$work/short" | cut -d' ' -f1)" -H "Content-Type: application/octet-stream" \
    -X PUT --data-binary @"$work/short" "$S3BLOCK_TEST_S3_ENDPOINT/$S3BLOCK_TEST_S3_BUCKET/$key" >/dev/null \
  || die "could not damage the block with curl"
fi
expect_exit 3 "$admin" "${cli_store[@]}" verify disk
grep -q "DAMAGED: block 7" "$work/out" || { cat "$work/out"; die "verify did not name block 7"; }
grep -qE "^[0-9]+ blocks checked, 1 problem$" "$work/out" || { cat "$work/out"; die "verify's summary does not count one problem"; }
s3b delete disk --yes >/dev/null 2>&1
log "all checks passed"

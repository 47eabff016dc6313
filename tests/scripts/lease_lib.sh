# Shared by the lease_*.sh tests (sourced after testlib.sh, with $prefix set): the fault proxy in
# front of the S3 server, and serve, which starts a server of the export on S3 under $prefix.

require_built "$plugin"
require_s3_env
require_tool nbdkit curl
require_libnbd_python
start_faultproxy

serve() {  # NAME ENDPOINT PARAMS...: nbdkit NAME on $work/NAME.sock
  local name=$1 endpoint=$2
  shift 2
  start_nbdkit -n "$name" "$plugin" "store=s3://$S3BLOCK_TEST_S3_BUCKET/$prefix" "endpoint=$endpoint" \
    "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" "secret-key=$S3BLOCK_TEST_S3_SECRET_KEY" size=16M "$@"
}

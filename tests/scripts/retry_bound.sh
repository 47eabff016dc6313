#!/bin/bash
# retry-timeout= bounds the time to an error however many requests queue for the connections.
#
# nbdkit with the S3 store reaches S3 through tests/faultproxy/faultproxy.py with connections=1,
# request-timeout=3, retry-timeout=10 and the default upload-threads (many uploaders for one
# connection). A client writes 64 blocks of 4 KiB; then the proxy stalls every PUT and the client
# flushes. The flush must fail, and within retry-timeout + 2 x request-timeout + a margin (the
# bound is computed from the parameters given to the server): a request's retry-timeout includes
# the time it waits for a connection, and the one attempt running at its deadline may take one
# request-timeout more; the other is for the attempt running when the flush began. A read of
# another export meanwhile gets its data, within the same bound. Then the stalls stop: the next
# flush succeeds, and a restarted server (straight to S3) reads back every block.
#
#   tests/scripts/retry_bound.sh    (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
require_built "$plugin"
require_s3_env
require_tool nbdkit curl python3
require_libnbd_python

retry_timeout=10
request_timeout=3
margin=3
blocks=64

prefix=retry-$$-$RANDOM
start_faultproxy

serve() {  # ENDPOINT PARAMS...: nbdkit on $sock
  local endpoint=$1
  shift
  start_nbdkit "$plugin" "store=s3://$S3BLOCK_TEST_S3_BUCKET/$prefix" "endpoint=$endpoint" \
    "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" "secret-key=$S3BLOCK_TEST_S3_SECRET_KEY" size=16M "$@"
}

# Another export with a block stored, written by a server straight to S3 (so that the server
# under test has it in no cache and must GET it).
serve "$S3BLOCK_TEST_S3_ENDPOINT"
nbd_io "$sock" "
h2 = nbd.NBD()
h2.connect_uri('nbd+unix:///other?socket=$sock')
h2.pwrite(b'o' * 4096, 0)
h2.flush()
h2.shutdown()"
stop_nbdkit

serve "http://127.0.0.1:$proxy_port" connections=1 "request-timeout=$request_timeout" \
  "retry-timeout=$retry_timeout"
# The bound, from what the server was given (its command line), not from the constants above.
args=$(tr '\0' ' ' <"/proc/$nbdkit_pid/cmdline")
given() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<" $args"; }
[ "$(given connections)" = 1 ] || die "the server was not started with connections=1: $args"
case " $args" in *" upload-threads="*) die "upload-threads= given: the default is under test" ;; esac
bound=$(python3 -c "print($(given retry-timeout) + 2 * $(given request-timeout) + $margin)")
log "connections=1 request-timeout=$(given request-timeout) retry-timeout=$(given retry-timeout):" \
  "a flush must fail within $bound s"

# The export exists (its metadata and lease are stored) before the stalls begin.
nbd_io "$sock" "h.pwrite(b'\\1' * 4096, 0); h.flush()"

nbd_io "$sock" "
import threading, time, urllib.request
def ctl(q):
    urllib.request.urlopen('http://127.0.0.1:$ctl_port/' + q, timeout=10).read()
blocks = $blocks
# Opened now: opening an export stores its lease (a PUT).
h2 = nbd.NBD()
h2.connect_uri('nbd+unix:///other?socket=$sock')
for i in range(blocks):
    h.pwrite(bytes([i + 1]) * 4096, i * 4096)
ctl('set?kinds=stall&rate=1&stall=60&methods=PUT')
# While the flush waits, a client of the other export reads its block: GETs do not stall, but
# they need the one connection too, which the uploads keep busy. Reads go before uploads: it
# gets its data, within the bound.
other = {}
def read_other():
    time.sleep(1)
    t = time.monotonic()
    try:
        other['result'] = 'the right data' if h2.pread(4096, 0) == b'o' * 4096 else 'WRONG DATA'
    except nbd.Error as e:
        other['result'] = str(e)
    other['spent'] = time.monotonic() - t
reader = threading.Thread(target=read_other)
t0 = time.monotonic()
reader.start()
try:
    h.flush()
    sys.exit('the flush succeeded while every PUT stalled')
except nbd.Error as e:
    spent = time.monotonic() - t0
    print('retry_bound: the flush failed after %.1f s: %s' % (spent, e))
    if spent > $bound:
        sys.exit('the flush error came after %.1f s, beyond the bound of %s s' % (spent, $bound))
reader.join()
print('retry_bound: the read of the other export took %.1f s: %s' % (other['spent'], other['result']))
if other['spent'] > $bound:
    sys.exit('the read of the other export took %.1f s, beyond the bound of %s s' % (other['spent'], $bound))
if other['result'] != 'the right data':
    sys.exit('the read of the other export failed: ' + other['result'])
h2.shutdown()
ctl('off')
# Every block is still the client's: the next flush, right away, stores them (an upload that was
# under way during the stalls and fails is tried again by the flush, not reported).
h.flush()
print('retry_bound: the flush after the stalls succeeded')
" || die "see above"
grep -q 'for a free connection' "$work/nbdkit.log" ||
  log "(no request had to give up waiting for a connection)"

stop_nbdkit
serve "$S3BLOCK_TEST_S3_ENDPOINT"
nbd_io "$sock" "
bad = [i for i in range($blocks) if h.pread(4096, i * 4096) != bytes([i + 1]) * 4096]
assert not bad, 'blocks %s differ after the restart' % bad" ||
  die "the blocks did not survive the restart"
stop_nbdkit
log "PASS"

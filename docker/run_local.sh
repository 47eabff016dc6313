#!/bin/bash
# Builds the image and serves ./data on port 10809 from a container, as the specification's
# "Running Locally (Docker)" describes. Run from anywhere; ./data is the data directory of the
# current directory (override with DATA_DIR). Plugin parameters are passed on:
#
#   docker/run_local.sh                 # export test_device (1G) and any other name clients ask for
#   docker/run_local.sh size=10G        # new exports are 10G
#
# Then, on the host:  sudo nbd-client localhost 10809 -N test_device
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image=${IMAGE:-nbd-s3-backend}
data=${DATA_DIR:-$(pwd)/data}
port=${PORT:-10809}

mkdir -p "$data"
docker build -t "$image" -f "$repo/docker/Dockerfile" "$repo"
exec docker run --rm -it \
  -p "$port:10809" \
  -v "$(cd "$data" && pwd):/data" \
  "$image" "$@"

#!/usr/bin/env bash
# Build the CPU image on a machine without Docker Hub: a base image from Debian packages
# (docker/build_base.sh), then the Dockerfile on it.
#
#   docker/build.sh [IMAGE]            # default IMAGE: totalseg:cpu
#
# Environment:
#   BASE_IMAGE   base to build on (default totalseg-base:bookworm, made by build_base.sh when missing)
#   TASKS        weights to bake in ("total body"; default none)
#   LOCAL_WHEELS folders of wheels (find-links) and LOCAL_INDEXES folders holding a PEP 503 `simple/` tree,
#                served to the build on 127.0.0.1 (the build uses the host network). Defaults: /opt/wheels,
#                /opt/pypi and /opt/pypi-more where they exist (they hold the CPU torch wheel on these
#                machines); torch then comes from them (and PyPI), not from PyTorch's CPU index.
#   TORCH_INDEX_URL  set it (e.g. https://download.pytorch.org/whl/cpu) to fetch torch from there instead.
#   DOCKER_BUILD_ARGS  more arguments for `docker build`.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${1:-totalseg:cpu}"
BASE_IMAGE="${BASE_IMAGE:-totalseg-base:bookworm}"

if [ "$BASE_IMAGE" = totalseg-base:bookworm ]; then
    docker/build_base.sh "$BASE_IMAGE"
fi

args=(--network=host --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TASKS=${TASKS:-}")
if [ "$BASE_IMAGE" = totalseg-base:bookworm ]; then
    # That base trusts the host's CAs (build_base.sh); pip uses the system store instead of its own.
    args+=(--build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
fi
if [ -z "${TORCH_INDEX_URL+set}" ]; then
    # Serve the local wheels and indexes on the loopback address for the build's pip.
    LOCAL_WHEELS="${LOCAL_WHEELS-$(for d in /opt/wheels; do [ -d "$d" ] && echo "$d"; done)}"
    LOCAL_INDEXES="${LOCAL_INDEXES-$(for d in /opt/pypi /opt/pypi-more; do [ -d "$d/simple" ] && echo "$d"; done)}"
    SERVE="$(mktemp -d /tmp/totalseg-pip.XXXXXX)"
    # A fixed port when free (the URLs are build arguments: the same ones keep Docker's layer cache valid).
    PORT="$(python3 -c '
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' "${LOCAL_PORT:-38741}")"
    find_links=() extra=()
    i=0; for d in $LOCAL_WHEELS; do ln -s "$d" "$SERVE/w$i"; find_links+=("http://127.0.0.1:$PORT/w$i/"); i=$((i+1)); done
    i=0; for d in $LOCAL_INDEXES; do ln -s "$d" "$SERVE/i$i"; extra+=("http://127.0.0.1:$PORT/i$i/simple/"); i=$((i+1)); done
    python3 -m http.server --bind 127.0.0.1 --directory "$SERVE" "$PORT" >/dev/null 2>&1 &
    SERVER_PID=$!
    trap 'kill "$SERVER_PID" 2>/dev/null; rm -rf "$SERVE"' EXIT
    for _ in $(seq 50); do python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/')" 2>/dev/null && break; sleep 0.1; done
    args+=(--build-arg TORCH_INDEX_URL=
           --build-arg "PIP_FIND_LINKS=${find_links[*]:-}"
           --build-arg "PIP_EXTRA_INDEX_URL=${extra[*]:-}")
else
    args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
fi

start=$(date +%s)
# shellcheck disable=SC2086
docker build "${args[@]}" ${DOCKER_BUILD_ARGS:-} -t "$IMAGE" .
echo "build: $IMAGE in $(( $(date +%s) - start )) s," \
     "$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

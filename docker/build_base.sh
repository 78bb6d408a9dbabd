#!/usr/bin/env bash
# Build a minimal Debian bookworm base image (python3 3.11, venv, pip) from Debian's packages, for machines
# that cannot reach Docker Hub: debootstrap a root filesystem, then `docker import` it.
#
#   sudo docker/build_base.sh [IMAGE]          # default IMAGE: totalseg-base:bookworm
#
# Environment: MIRROR (default: the Debian mirror apt uses on this machine, else deb.debian.org),
# SUITE (default bookworm), FORCE=1 to rebuild an image that exists. Needs root, debootstrap and a Docker engine.
set -euo pipefail
IMAGE="${1:-totalseg-base:bookworm}"
SUITE="${SUITE:-bookworm}"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "build_base: $IMAGE exists (FORCE=1 rebuilds it)"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "build_base: needs debootstrap (apt-get install -y debootstrap)" >&2; exit 1; }

if [ -z "${MIRROR:-}" ]; then
    # The first Debian main archive apt uses here (deb822 "URIs:" or one-line "deb URL suite" form).
    MIRROR="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | sed -nE 's#^URIs:[[:space:]]*([^[:space:]]*/debian)/?$#\1#p; s#^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]*/debian)/?[[:space:]].*#\2#p' \
        | head -n1 || true)"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi

WORK="$(mktemp -d /tmp/totalseg-base.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/rootfs"
echo "build_base: debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; exit 1; }

# Certificates the host trusts beyond Debian's (a TLS-inspecting proxy's CA, a hospital's own CA): added to the
# image's trust store, so that pip in the build (PIP_CERT=/etc/ssl/certs/ca-certificates.crt) reaches the
# indexes as the host does. HOST_CA_BUNDLE= (empty) skips it.
HOST_CA_BUNDLE="${HOST_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
if [ -n "$HOST_CA_BUNDLE" ] && [ -f "$HOST_CA_BUNDLE" ]; then
    python3 - "$HOST_CA_BUNDLE" "$ROOT/etc/ssl/certs/ca-certificates.crt" "$ROOT/usr/local/share/ca-certificates" <<'PY'
import re, sys
pem = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
norm = lambda c: "".join(c.split())
host, image, out = sys.argv[1:]
have = {norm(c) for c in pem.findall(open(image).read())}
extra = [c for c in pem.findall(open(host).read()) if norm(c) not in have]
for i, c in enumerate(extra):
    open(f"{out}/host-{i}.crt", "w").write(c + "\n")
print(f"build_base: {len(extra)} host CA certificate(s) added")
PY
    chroot "$ROOT" update-ca-certificates >/dev/null
fi

# Slim it: package caches and lists, docs, man pages, locales other than C (the slim images do the same).
cat >"$ROOT/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
SOURCES
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/tmp/*
find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
find "$ROOT/usr/lib/python3"* -name '__pycache__' -type d -prune -exec rm -rf {} + 2>/dev/null || true

tar --numeric-owner -C "$ROOT" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
echo "build_base: $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"

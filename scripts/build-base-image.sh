#!/usr/bin/env bash
# Build the local base image (Debian bookworm minbase + python3, venv, pip, CA certificates)
# with debootstrap and `docker import`, for machines that cannot pull from any registry.
# The Dockerfile takes it as BASE_IMAGE. Skipped when the tag already exists (FORCE=1 rebuilds).
#
#   BASE_IMAGE     tag to create                 (default perf-predictor-base:bookworm)
#   DEBIAN_MIRROR  Debian mirror URL             (default: the first one in this machine's apt sources)
#   SUITE          Debian suite                  (default bookworm)
#   CA_BUNDLE      CA bundle baked into the image (default /etc/ssl/certs/ca-certificates.crt), so that
#                  pip inside `docker build` trusts the same TLS roots (incl. any egress proxy) as the host
#   FORCE=1        rebuild even if the tag exists
set -euo pipefail

tag=${BASE_IMAGE:-perf-predictor-base:bookworm}
suite=${SUITE:-bookworm}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "build-base-image: $tag exists; skipping (FORCE=1 rebuilds)"
    exit 0
fi

for tool in debootstrap docker; do
    command -v "$tool" >/dev/null 2>&1 || { echo "build-base-image: $tool missing (apt-get install -y docker.io debootstrap)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "build-base-image: debootstrap needs root" >&2; exit 1; }

mirror_from_apt() {
    # deb822 sources (URIs: ...) first, then one-line sources (deb URL suite ...); the first Debian
    # archive (not the security one) wins.
    local f url
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        url=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' "$f" | grep -v -- '-security' | head -n1 || true)
        [ -n "$url" ] && { echo "$url"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        url=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' "$f" \
              | grep -v -- '-security' | head -n1 || true)
        [ -n "$url" ] && { echo "$url"; return; }
    done
}

mirror=${DEBIAN_MIRROR:-$(mirror_from_apt)}
[ -n "$mirror" ] || { echo "build-base-image: no Debian mirror in /etc/apt/sources.list*; set DEBIAN_MIRROR" >&2; exit 1; }
[ -r "$ca_bundle" ] || { echo "build-base-image: CA bundle $ca_bundle not readable" >&2; exit 1; }

work=$(mktemp -d /var/tmp/perf-predictor-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
start=$(date +%s)

echo "build-base-image: debootstrap $suite from $mirror"
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 40 "$work/debootstrap.log" >&2; exit 1; }

# The host's roots, so TLS from inside builds works behind the same egress as the host.
# Written after ca-certificates' own bundle; a later update-ca-certificates would regenerate it.
install -m 0644 "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"

# Trim what an image never needs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
       "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
       "$rootfs"/usr/share/locale/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*

echo "build-base-image: importing as $tag"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase $suite + python3, python3-venv, python3-pip, ca-certificates" \
    - "$tag" >/dev/null

echo "build-base-image: $tag built in $(( $(date +%s) - start ))s," \
     "$(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"

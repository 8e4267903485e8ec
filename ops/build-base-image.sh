#!/usr/bin/env bash
# Build a local Python 3.11 base image from Debian packages, for hosts that can
# reach a Debian mirror but no container registry.
#
#   ops/build-base-image.sh                # prints the image reference on stdout
#   ops/build-base-image.sh --print-mirror # only prints the mirror it would use
#
# The root filesystem is made with `debootstrap --variant=minbase bookworm`
# using the mirror this host's apt is configured with (read at run time from
# /etc/apt/sources.list and /etc/apt/sources.list.d/*), then imported with
# `docker import`. The tag is a hash of the recipe (suite, packages, RECIPE),
# so an existing image is reused and nothing is downloaded again. Needs root (debootstrap) and Docker.
set -euo pipefail

SUITE="${EV_BASE_SUITE:-bookworm}"
PACKAGES="python3,python3-venv,python3-pip,ca-certificates"
REPO="${EV_BASE_REPO:-evcharge-base}"

log() { echo "build-base-image: $*" >&2; }

# The tag hashes the recipe, not this file: bump RECIPE when the steps below change.
RECIPE=1
hash="$(echo "recipe $RECIPE: $SUITE minbase $PACKAGES" | sha256sum | cut -c1-12)"
image="$REPO:$hash"

if [ "${1:-}" != "--print-mirror" ] && docker image inspect "$image" >/dev/null 2>&1; then
    log "$image already exists"
    echo "$image"
    exit 0
fi

# First "deb" URI of the host's apt configuration (one-line or deb822 format).
# EV_APT_SOURCES (space-separated files) replaces the host's files, for tests.
APT_FILES="${EV_APT_SOURCES:-/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources}"

find_mirror() {
    local f
    for f in $APT_FILES; do
        case "$f" in *.sources) continue ;; esac
        [ -r "$f" ] || continue
        # deb [options] URI SUITE COMPONENTS...
        awk -v suite="$SUITE" '$1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) print $i
            }' "$f"
    done
    for f in $APT_FILES; do
        case "$f" in *.sources) ;; *) continue ;; esac
        [ -r "$f" ] || continue
        # Stanzas are separated by blank lines; print URIs of "deb" stanzas for $SUITE.
        awk -v suite="$SUITE" '
            function flush(   n, k, a) {
                n = split(suites, a, /[ \t]+/)
                for (k = 2; k <= n; k++) if (deb && a[k] == suite) { print uri; break }
                deb = 0; suites = ""; uri = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^Types:/ { deb = ($0 ~ /[ \t]deb([ \t]|$)/) }
            /^Suites:/ { suites = $0 }
            /^URIs:/ { uri = $2 }
            END { flush() }' "$f"
    done
}

mirror="${EV_DEBIAN_MIRROR:-$(find_mirror | grep -v -- '-security' | head -n1 || true)}"
if [ "${1:-}" = "--print-mirror" ]; then
    [ -n "$mirror" ] && echo "$mirror"
    [ -n "$mirror" ]
    exit
fi
if [ -z "$mirror" ]; then
    log "no Debian mirror found in the apt configuration; set EV_DEBIAN_MIRROR"
    exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get install -y debootstrap >&2 || { apt-get update >&2 && apt-get install -y debootstrap >&2; }
fi

work="$(mktemp -d -t evcharge-base.XXXXXX)"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

log "debootstrap $SUITE from the host's configured mirror into $work/rootfs"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/rootfs" "$mirror" >&2

# Trim what a runtime image does not need.
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"* \
       "$work/rootfs/usr/share/doc/"* "$work/rootfs/usr/share/man/"* \
       "$work/rootfs/usr/share/locale/"*

log "importing as $image"
tar -C "$work/rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    --message "evcharge base: debootstrap $SUITE minbase + python3" \
    - "$image" >&2
echo "$image"

#!/usr/bin/env bash
# Runs the loopback load test with the sidecar variants: installs haproxy and nginx when they are
# missing (apt, Debian and Ubuntu), makes sure the packages leave no system service running,
# prints the versions, then runs `cargo bench --bench load` from the repository root. Arguments
# are passed on to cargo bench.
#
#   benches/sidecars.sh
#   benches/sidecars.sh --install-only    # install (when missing) and print the versions only
set -euo pipefail

install_only=false
if [[ ${1:-} == --install-only ]]; then
    install_only=true
    shift
fi

packages=(haproxy nginx)
# The binaries live in /usr/sbin, which is not always in a non-root user's PATH.
export PATH="$PATH:/usr/sbin:/usr/local/sbin:/sbin"

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
fi

missing=()
for package in "${packages[@]}"; do
    if ! command -v "$package" >/dev/null 2>&1; then
        missing+=("$package")
    fi
done

stop_service() {
    local service=$1
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        "${sudo[@]}" systemctl stop "$service" >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        "${sudo[@]}" service "$service" stop >/dev/null 2>&1 || true
    fi
}

if ((${#missing[@]} > 0)); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "sidecars.sh: ${missing[*]} missing and apt-get not found; install them with the" \
            "system's package manager" >&2
        exit 1
    fi
    echo "installing ${missing[*]}" >&2

    # Keep the packages' maintainer scripts from starting the services (Debian's policy-rc.d
    # convention, also honoured by deb-systemd-invoke), unless a policy is already in place.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        "${sudo[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        trap '"${sudo[@]}" rm -f "$policy"' EXIT
    fi

    install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends "${missing[@]}")
    if ! "${install[@]}"; then
        echo "retrying after apt-get update" >&2
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
        "${install[@]}"
    fi

    # Whatever the policy, stop the services the installation may have started, so that no
    # system nginx or haproxy stays bound to port 80 during (or after) the benchmark.
    for package in "${missing[@]}"; do
        stop_service "$package"
    done
fi

for package in "${packages[@]}"; do
    if ! command -v "$package" >/dev/null 2>&1; then
        echo "sidecars.sh: $package is still not installed" >&2
        exit 1
    fi
done

# `sed -n 1p` reads all of the output: `head -n 1` could end the pipe early and fail pipefail.
haproxy -v 2>&1 | sed -n 1p
nginx -v 2>&1 | sed -n 1p

if $install_only; then
    exit 0
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo bench --bench load "$@"

#!/usr/bin/env bash
# Installs the real components the tests and the demo run against, when missing:
# kubectl (Debian package kubernetes-client), Prometheus (Debian package prometheus) and
# libfaketime (Debian package faketime), which steps the operator's clock in a chaos test;
# and `make` with a C compiler, which build jemalloc, the operator's allocator.
set -euo pipefail

warn_old_kubectl() {
    # Debian 12's kubernetes-client is kubectl 1.20; the tests use flags of 1.24 and later.
    local minor
    minor=$(kubectl version --client -o json 2>/dev/null | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -n 1)
    if [ -n "$minor" ] && [ "$minor" -lt 24 ]; then
        echo "warning: kubectl 1.$minor is older than the 1.24 the tests expect; install a newer kubectl" >&2
    fi
}
trap warn_old_kubectl EXIT

missing=()
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    sudo=sudo
else
    sudo=
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: please install ${missing[*]} (kubectl, prometheus, faketime, make and cc must be on PATH)" >&2
    exit 1
fi
echo "installing ${missing[*]} with apt-get" >&2
$sudo apt-get update -qq
# The Debian prometheus package would start a system service; only the binary is needed.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

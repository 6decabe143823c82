#!/usr/bin/env bash
# Packages the kubectl plugin for krew and writes its plugin manifest.
#
#   scripts/krew-manifest.sh [--target TRIPLE]... [--binary FILE] [--dist DIR] [--manifest FILE]
#
# For each platform (the host's by default; --target adds Rust target triples whose
# toolchain and linker are installed), builds `kubectl-kubervisor` in release mode, packs
# it (stripped, for the host) with its README into
# DIST/kubectl-kubervisor-vVERSION-OS-ARCH.tar.gz, reproducibly (sorted, owner 0, mtime 0,
# gzip without a name or time), and writes the manifest (default plugins/kubervisor.yaml)
# with each archive's sha256 and its release URL:
#   RELEASES/vVERSION/kubectl-kubervisor-vVERSION-OS-ARCH.tar.gz
# RELEASES defaults to the workspace repository's GitHub releases; KREW_RELEASES overrides
# it. Upload the archives there when releasing. --binary packs an already built binary
# for the host platform instead of building (the tests do this). DIST defaults to
# target/krew.
set -euo pipefail

die() {
    echo "krew-manifest.sh: error: $*" >&2
    exit 2
}
usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
targets=()
binary=
dist=$ROOT/target/krew
manifest=$ROOT/plugins/kubervisor.yaml
while [ $# -gt 0 ]; do
    case $1 in
    --target) targets+=("${2:?--target needs a triple}"); shift 2 ;;
    --binary) binary=${2:?--binary needs a file}; shift 2 ;;
    --dist) dist=${2:?--dist needs a directory}; shift 2 ;;
    --manifest) manifest=${2:?--manifest needs a file}; shift 2 ;;
    -h | --help) usage ;;
    *) die "unknown argument $1 (--help)" ;;
    esac
done
for c in cargo tar gzip sha256sum; do
    command -v "$c" >/dev/null 2>&1 || die "$c is not installed"
done

version=$(cargo pkgid --offline --manifest-path "$ROOT/crates/kubectl-kubervisor/Cargo.toml")
version=v${version##*[@#]}
[[ $version =~ ^v[0-9]+\.[0-9]+\.[0-9]+ ]] || die "cannot read the plugin's version (got $version)"
repository=$(sed -n 's/^repository = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml")
[ -n "$repository" ] || die "no repository in the workspace Cargo.toml"
releases=${KREW_RELEASES:-$repository/releases/download}

host=$(rustc -vV | sed -n 's/^host: //p')
[ ${#targets[@]} -gt 0 ] || targets=("$host")
[ -z "$binary" ] || [ "${targets[*]}" = "$host" ] || die "--binary packs the host platform ($host) only"

# krew's os and arch labels (Go's GOOS and GOARCH) for a Rust target triple.
krew_platform() {
    local os arch
    case $1 in
    *-linux-*) os=linux ;;
    *-apple-darwin) os=darwin ;;
    *-windows-*) os=windows ;;
    *) die "no krew platform for target $1" ;;
    esac
    case $1 in
    x86_64-*) arch=amd64 ;;
    aarch64-*) arch=arm64 ;;
    *) die "no krew arch for target $1" ;;
    esac
    echo "$os $arch"
}

mkdir -p "$dist" "$(dirname "$manifest")"
platforms=
for target in "${targets[@]}"; do
    read -r os arch < <(krew_platform "$target")
    exe=kubectl-kubervisor
    [ "$os" != windows ] || exe=kubectl-kubervisor.exe
    built=$binary
    if [ -z "$built" ]; then
        # The host's build goes where a plain `cargo build --release` puts it, and reuses it.
        out=${CARGO_TARGET_DIR:-$ROOT/target}
        flags=()
        if [ "$target" != "$host" ]; then
            flags=(--target "$target")
            out=$out/$target
        fi
        cargo build --release --locked -p kubectl-kubervisor "${flags[@]}" \
            --manifest-path "$ROOT/Cargo.toml" >&2
        built=$out/release/$exe
    fi
    [ -x "$built" ] || die "no executable at $built"
    archive=kubectl-kubervisor-$version-$os-$arch.tar.gz
    staging=$(mktemp -d)
    cp "$built" "$staging/$exe"
    cp "$ROOT/crates/kubectl-kubervisor/README.md" "$staging/README.md"
    # Line tables help debugging here, not in a download: the host's strip drops them.
    if [ "$target" = "$host" ] && command -v strip >/dev/null 2>&1; then
        strip "$staging/$exe"
    fi
    chmod 0755 "$staging/$exe"
    chmod 0644 "$staging/README.md"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -C "$staging" -cf - "$exe" README.md | gzip -9 -n >"$dist/$archive"
    rm -rf "$staging"
    sha=$(sha256sum "$dist/$archive" | cut -d' ' -f1)
    echo "krew-manifest.sh: $dist/$archive $sha" >&2
    platforms+="  - selector:
      matchLabels:
        os: $os
        arch: $arch
    uri: $releases/$version/$archive
    sha256: $sha
    bin: $exe
    files:
    - from: $exe
      to: .
    - from: README.md
      to: .
"
done

platforms=${platforms%$'\n'}
cat >"$manifest" <<EOF
# krew plugin manifest, written by scripts/krew-manifest.sh: each sha256 is that of the
# archive the script built; upload the archives to the URLs below when releasing.
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: kubervisor
spec:
  version: $version
  homepage: $repository
  shortDescription: Operate Kubervisor, which ejects anomalous pods from Services
  description: |
    Lists and describes KubervisorServices (state, breakers, managed pods),
    activates or deactivates traffic gating on a Service, and moves one pod at a
    time in or out of traffic (eject, restore, pause, unpause) with the same
    preconditions as the operator, refusing to break the floor unless --force.
  platforms:
$platforms
EOF
echo "krew-manifest.sh: wrote $manifest ($version)" >&2

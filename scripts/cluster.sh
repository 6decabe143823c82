#!/usr/bin/env bash
# A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok (fake nodes whose pods run nowhere), all on 127.0.0.1.
#
#   scripts/cluster.sh build            build the pinned binaries from Go modules (cached)
#   scripts/cluster.sh bindir           print the directory holding the built binaries
#   scripts/cluster.sh up DIR           start a cluster with all its state under DIR
#   scripts/cluster.sh down DIR [--purge]  stop it (and delete DIR with --purge)
#
# Environment: KUBERVISOR_CACHE (default ~/.cache/kubervisor) holds sources and binaries;
# KUBERVISOR_NODES (default 1) fake nodes; KUBERVISOR_UP_TIMEOUT (default 120) seconds.
# Functions run through wait_until, timed and traps look unreachable to shellcheck, and
# the bash -c programs are single-quoted on purpose.
# shellcheck disable=SC2016,SC2317
set -euo pipefail

# Pinned releases; README "Real Kubernetes control plane" says why.
KUBE_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.7.0
HELM_VERSION=v3.19.5

CACHE=${KUBERVISOR_CACHE:-$HOME/.cache/kubervisor}
BIN_ROOT=$CACHE/bin
BINDIR=$BIN_ROOT/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok helm)

die() {
    echo "cluster.sh: error: $*" >&2
    exit 1
}
log() { echo "cluster.sh: $*" >&2; }

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Installs Debian packages for the commands given as command:package, when missing.
need_commands() {
    local missing=() spec
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "please install ${missing[*]}"
    local sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    log "installing ${missing[*]} with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ---------------------------------------------------------------------------------------
# build

go_env() {
    # Never fetch another Go toolchain; build static binaries; no VCS stamping.
    export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
}

# Field FIELD of `go mod download -json MODULE@VERSION`.
mod_field() {
    go mod download -json "$1" | sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}$/\1/p"
}

# Runs a build step, printing how long it took.
timed() {
    local what=$1 start
    shift
    start=$(date +%s)
    log "building $what"
    "$@"
    log "built $what in $(($(date +%s) - start)) s"
}

# A module outside the repo that pins k8s.io/kubernetes, its staging modules replaced by
# their published v0.x.y versions (read from k8s.io/kubernetes' own go.mod).
k8s_module() {
    local src=$1 gomod staging
    gomod=$(mod_field "k8s.io/kubernetes@$KUBE_VERSION" GoMod)
    [ -f "$gomod" ] || die "cannot download k8s.io/kubernetes@$KUBE_VERSION"
    staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*#\1#p' "$gomod")
    [ -n "$staging" ] || die "no staging modules found in $gomod"
    mkdir -p "$src"
    {
        echo "module kubervisor.test/kubernetes-build"
        echo
        grep -E '^(go|godebug) ' "$gomod"
        echo
        echo "require k8s.io/kubernetes $KUBE_VERSION"
        echo
        echo "replace ("
        local m
        for m in $staging; do
            echo "	$m => $m v0.${KUBE_VERSION#v1.}"
        done
        echo ")"
    } >"$src/go.mod"
    cat >"$src/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
EOF
    (cd "$src" && go mod tidy)
}

# The one change made to Kubernetes: Endpoints and EndpointSlices accept loopback
# addresses. Pods get loopback IPs here (nothing may be sent elsewhere on a test machine)
# and the API server would refuse to publish them as endpoints otherwise. The build uses
# a copy of the k8s.io/kubernetes module with that one line changed.
k8s_patch() {
    local src=$1
    if [ ! -f "$src/kubernetes/.patched" ]; then
        k8s_copy_patched "$src"
    fi
    (cd "$src" && go mod edit -replace "k8s.io/kubernetes=./kubernetes")
}

k8s_copy_patched() {
    local src=$1 dir file=pkg/apis/core/validation/validation.go
    dir=$(mod_field "k8s.io/kubernetes@$KUBE_VERSION" Dir)
    rm -rf "$src/kubernetes" "$src/kubernetes.tmp"
    cp -R "$dir" "$src/kubernetes.tmp"
    chmod -R u+w "$src/kubernetes.tmp"
    awk '
        /^func ValidateEndpointIP\(/ { inside = 1 }
        inside && /if ip\.IsLoopback\(\) \{/ { sub(/if ip\.IsLoopback\(\) \{/, "if false \\&\\& ip.IsLoopback() {"); n++ }
        inside && /^}/ { inside = 0 }
        { print }
        END { if (n != 1) exit 3 }
    ' "$dir/$file" >"$src/kubernetes.tmp/$file" || die "cannot patch ValidateEndpointIP in $dir/$file"
    touch "$src/kubernetes.tmp/.patched"
    mv "$src/kubernetes.tmp" "$src/kubernetes"
}

build_kubernetes() {
    local out=$BIN_ROOT/kubernetes-$KUBE_VERSION+loopback-endpoints src=$CACHE/src/kubernetes-$KUBE_VERSION c todo=()
    for c in kube-apiserver kube-controller-manager kube-scheduler; do
        [ -x "$out/$c" ] || todo+=("$c")
    done
    [ ${#todo[@]} -eq 0 ] && return 0
    [ -f "$src/go.sum" ] || timed "k8s.io/kubernetes $KUBE_VERSION module (download)" k8s_module "$src"
    k8s_patch "$src"
    local minor=${KUBE_VERSION#v1.} date ldflags="-s -w" pkg
    minor=${minor%%.*}
    date=$(mod_field "k8s.io/kubernetes@$KUBE_VERSION" Info | xargs sed -n 's/.*"Time":"\([^"]*\)".*/\1/p')
    # What hack/lib/version.sh sets, so that `kubectl version` shows the real release.
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
    done
    mkdir -p "$out"
    for c in "${todo[@]}"; do
        timed "$c $KUBE_VERSION" bash -c 'cd "$1" && go build -trimpath -ldflags="$2" -o "$3.tmp" "k8s.io/kubernetes/cmd/$4" && mv "$3.tmp" "$3"' \
            _ "$src" "$ldflags" "$out/$c" "$c"
    done
}

build_etcd() {
    local out=$BIN_ROOT/etcd-$ETCD_VERSION src=$CACHE/src/etcd-$ETCD_VERSION
    [ -x "$out/etcd" ] && return 0
    if [ ! -f "$src/go.sum" ]; then
        mkdir -p "$src"
        printf 'module kubervisor.test/etcd-build\n\ngo 1.24.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
            "$ETCD_VERSION" >"$src/go.mod"
        cat >"$src/main.go" <<'EOF'
// etcd's own main: etcdmain.Main with the command line.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
        timed "go.etcd.io/etcd/server/v3 $ETCD_VERSION module (download)" bash -c 'cd "$1" && go mod tidy' _ "$src"
    fi
    mkdir -p "$out"
    timed "etcd $ETCD_VERSION" bash -c 'cd "$1" && go build -trimpath -ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$2" -o "$3.tmp" . && mv "$3.tmp" "$3"' \
        _ "$src" "$ETCD_VERSION" "$out/etcd"
}

# A command of a module without replace directives: go install MODULE/cmd/X@VERSION.
build_install() {
    local name=$1 version=$2 pkg=$3 ldflags=$4 out=$BIN_ROOT/$1-$2
    [ -x "$out/$name" ] && return 0
    mkdir -p "$out.tmp"
    timed "$name $version" env GOBIN="$out.tmp" go install -trimpath -ldflags="-s -w $ldflags" "$pkg@$version"
    rm -rf "$out" && mv "$out.tmp" "$out"
}

build_helm() {
    local gomod kminor
    [ -x "$BIN_ROOT/helm-$HELM_VERSION/helm" ] && return 0
    gomod=$(mod_field "helm.sh/helm/v3@$HELM_VERSION" GoMod)
    # As helm's Makefile: the Kubernetes version its client libraries come from.
    kminor=$(sed -n 's#^[[:space:]]*k8s\.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod" | head -n 1)
    [ -n "$kminor" ] || die "cannot read k8s.io/client-go from helm's go.mod"
    local v=helm.sh/helm/v3
    build_install helm "$HELM_VERSION" "$v/cmd/helm" \
        "-X $v/internal/version.version=$HELM_VERSION -X $v/internal/version.gitTreeState=clean
         -X $v/pkg/lint/rules.k8sVersionMajor=1 -X $v/pkg/lint/rules.k8sVersionMinor=$kminor
         -X $v/pkg/chartutil.k8sVersionMajor=1 -X $v/pkg/chartutil.k8sVersionMinor=$kminor"
}

link_bindir() {
    mkdir -p "$BINDIR.tmp"
    ln -sfn "../etcd-$ETCD_VERSION/etcd" "$BINDIR.tmp/etcd"
    local c
    for c in kube-apiserver kube-controller-manager kube-scheduler; do
        ln -sfn "../kubernetes-$KUBE_VERSION+loopback-endpoints/$c" "$BINDIR.tmp/$c"
    done
    ln -sfn "../kwok-$KWOK_VERSION/kwok" "$BINDIR.tmp/kwok"
    ln -sfn "../helm-$HELM_VERSION/helm" "$BINDIR.tmp/helm"
    rm -rf "$BINDIR" && mv "$BINDIR.tmp" "$BINDIR"
}

cmd_build() {
    [ $# -eq 0 ] || usage
    command -v go >/dev/null 2>&1 || die "go is not installed (the binaries are built from Go modules)"
    go_env
    # Builds take both cores for many minutes: leave room for everything else.
    renice -n 10 -p $$ >/dev/null
    mkdir -p "$BIN_ROOT"
    # One build at a time per cache; a second caller waits, then finds the binaries built.
    exec 9>"$CACHE/build.lock"
    flock 9
    local start
    start=$(date +%s)
    build_etcd
    build_kubernetes
    build_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok \
        "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
    build_helm
    link_bindir
    log "binaries ready in $BINDIR ($(($(date +%s) - start)) s)"
}

missing_binaries() {
    local b missing=()
    for b in "${BINARIES[@]}"; do
        [ -x "$BINDIR/$b" ] || missing+=("$b")
    done
    echo "${missing[*]}"
}

cmd_bindir() {
    [ $# -eq 0 ] || usage
    local missing
    missing=$(missing_binaries)
    [ -z "$missing" ] || die "missing $missing in $BINDIR: run scripts/cluster.sh build"
    echo "$BINDIR"
}

# ---------------------------------------------------------------------------------------
# up, down

POD_CIDR=127.80.0.0/16      # kwok hands pod IPs out from here (from .1): loopback, bindable as is
SERVICE_CIDR=127.96.0.0/16  # ClusterIPs: allocated, never routed; loopback all the same
NODE_IP=127.0.0.1
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
PORT_REGISTRY=${TMPDIR:-/tmp}/kubervisor-cluster-ports
MARKER=.kubervisor-cluster

# Picks N free ports on 127.0.0.1 for DIR, outside the ephemeral range (where outgoing
# connections would take them), and records them in a registry shared by every `up` on
# this machine, so that clusters started at the same time never pick the same port.
# Entries of clusters that are gone (no live process, older than 10 minutes) expire.
pick_ports() {
    python3 - "$PORT_REGISTRY" "$1" "$2" <<'EOF'
import fcntl, os, random, socket, sys, time
registry, owner, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
low, high = 20000, 32000
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral = [int(x) for x in f.read().split()]
    high = min(high, ephemeral[0] - 1)
except OSError:
    pass

def alive(d):
    try:
        names = os.listdir(os.path.join(d, "pids"))
    except OSError:
        return False
    for name in names:
        try:
            with open(os.path.join(d, "pids", name)) as f:
                os.kill(int(f.read().strip()), 0)
            return True
        except (OSError, ValueError):
            pass
    return False

with open(registry, "a+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    now, keep = time.time(), []
    for line in f.read().splitlines():
        try:
            port, d, t = line.split("\t")
            port, t = int(port), float(t)
        except ValueError:
            continue
        if d != owner and (alive(d) or now - t < 600):
            keep.append((port, d, t))
    taken = {p for p, _, _ in keep}
    picked = []
    for _ in range(10000):
        if len(picked) == count:
            break
        port = random.randint(low, high)
        if port in taken or port in picked:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        picked.append(port)
    if len(picked) != count:
        sys.exit("no free ports found")
    f.seek(0)
    f.truncate()
    for p, d, t in keep + [(p, owner, now) for p in picked]:
        f.write(f"{p}\t{d}\t{t}\n")
print(" ".join(map(str, picked)))
EOF
}

release_ports() {
    [ -f "$PORT_REGISTRY" ] || return 0
    python3 - "$PORT_REGISTRY" "$1" <<'EOF'
import fcntl, sys
registry, owner = sys.argv[1], sys.argv[2]
with open(registry, "a+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    lines = [l for l in f.read().splitlines() if l.split("\t")[1:2] != [owner]]
    f.seek(0)
    f.truncate()
    f.write("".join(l + "\n" for l in lines))
EOF
}

# The PID of component $2 of cluster $1, if that process is alive and is ours: its
# command line names the cluster's directory (so a reused PID is never signalled), or it
# is a child of this very script that has not reached exec yet.
component_pid() {
    local file=$1/pids/$2.pid pid stat
    [ -f "$file" ] || return 1
    pid=$(cat "$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) } # the fields after the command name: state, parent PID, ...
    [ "${stat%% *}" != Z ] || return 1
    if ! tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$1/"; then
        stat=${stat#* }
        [ "${stat%% *}" = "$$" ] || return 1
    fi
    echo "$pid"
}

# Stops every component of cluster $1: TERM, then KILL after a bounded wait.
stop_cluster() {
    local dir=$1 c pid pids=() i
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
        c=${COMPONENTS[$i]}
        if pid=$(component_pid "$dir" "$c"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    for ((i = 0; i < 100; i++)); do
        local left=()
        for pid in ${pids[@]+"${pids[@]}"}; do
            kill -0 "$pid" 2>/dev/null && left+=("$pid")
        done
        pids=(${left[@]+"${left[@]}"})
        [ ${#pids[@]} -eq 0 ] && break
        sleep 0.1
    done
    for pid in ${pids[@]+"${pids[@]}"}; do
        log "process $pid did not stop within 10 s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -f "$dir"/pids/*.pid
    release_ports "$dir"
}

# openssl's chatter goes to the log; it says why when a step fails.
ossl() { openssl "$@" 2>>"$DIR/logs/openssl.log"; }
gen_key() { ossl ecparam -name prime256v1 -genkey -noout -out "$1"; }

# Issues $PKI/$1.{key,crt} for subject $2, signed by the CA $CA (default: ca), with the
# extra extensions $3.
issue_cert() {
    local pki=$PKI name=$1 subject=$2 ext=$3 ca=${CA:-ca}
    gen_key "$pki/$name.key"
    ossl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr"
    printf '[v3]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n%s\n' \
        "$ext" >"$pki/$name.ext"
    ossl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
        -extfile "$pki/$name.ext" -extensions v3 -out "$pki/$name.crt"
    rm -f "$pki/$name.csr" "$pki/$name.ext"
}

# A self-signed CA $PKI/$1.{key,crt}.
make_ca() {
    gen_key "$PKI/$1.key"
    printf '[req]\ndistinguished_name=dn\n[dn]\n[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\n' \
        >"$PKI/$1.cnf"
    ossl req -x509 -new -key "$PKI/$1.key" -subj "/CN=kubervisor-test-$1" -days 3650 -sha256 \
        -config "$PKI/$1.cnf" -extensions v3 -out "$PKI/$1.crt"
    rm -f "$PKI/$1.cnf"
}

make_pki() {
    mkdir -p "$PKI"
    make_ca ca
    # The aggregation layer's own CA and client, as the API server expects them.
    make_ca front-proxy-ca
    CA=front-proxy-ca issue_cert front-proxy-client "/CN=front-proxy-client" "extendedKeyUsage=clientAuth"
    local first_service_ip=${SERVICE_CIDR%.*/*}.1
    issue_cert apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$first_service_ip"
    issue_cert admin "/O=system:masters/CN=kubervisor-admin" "extendedKeyUsage=clientAuth"
    issue_cert kube-controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
    issue_cert kube-scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
    issue_cert kwok "/O=system:masters/CN=kwok-controller" "extendedKeyUsage=clientAuth"
    # The service-account token signing key pair.
    gen_key "$PKI/sa.key"
    ossl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
    chmod 600 "$PKI"/*.key
}

# Writes a self-contained kubeconfig $1 for the client certificate $PKI/$2.
write_kubeconfig() {
    local b64="base64 -w0"
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kubervisor-test
  cluster:
    server: $API_URL
    certificate-authority-data: $($b64 <"$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$PKI/$2.crt")
    client-key-data: $($b64 <"$PKI/$2.key")
contexts:
- name: kubervisor-test
  context:
    cluster: kubervisor-test
    user: $2
current-context: kubervisor-test
EOF
    chmod 600 "$1"
}

start() {
    local name=$1
    shift
    "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$DIR/pids/$name.pid"
}

# Fails with the log of any component that exited.
check_alive() {
    local c
    for c in "$@"; do
        if ! component_pid "$DIR" "$c" >/dev/null; then
            echo "cluster.sh: error: $c exited; the end of $DIR/logs/$c.log:" >&2
            tail -n 30 "$DIR/logs/$c.log" >&2 2>/dev/null || true
            exit 1
        fi
    done
}

# Waits until "$@" succeeds, at most until the deadline; then fails with the end of the
# log of $LOG_OF, the component being waited for.
wait_until() {
    local what=$1
    shift
    while ! "$@" >/dev/null 2>&1; do
        check_alive "${COMPONENTS[@]:0:$STARTED}"
        if [ "$(date +%s)" -ge "$DEADLINE" ]; then
            echo "cluster.sh: error: timed out after ${UP_TIMEOUT}s waiting for $what; the end of $DIR/logs/$LOG_OF.log:" >&2
            tail -n 30 "$DIR/logs/$LOG_OF.log" >&2 || true
            exit 1
        fi
        sleep 0.25
    done
}

api() {
    curl -sS --fail --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$@"
}

healthz_ok() { [ "$(curl -sS --max-time 5 "$@")" = ok ]; }

nodes_ready() {
    api "$API_URL/api/v1/nodes?labelSelector=type%3Dkwok" | python3 -c '
import json, sys
want = int(sys.argv[1])
nodes = json.load(sys.stdin)["items"]
def ready(n):
    conds = {c["type"]: c["status"] for c in n.get("status", {}).get("conditions", [])}
    taints = [t["key"] for t in n.get("spec", {}).get("taints", []) or []]
    return conds.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints
sys.exit(0 if sum(map(ready, nodes)) >= want else 1)' "$NODES"
}

cleanup_failed_up() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$UP_DONE" != 1 ]; then
        [ -d "$DIR/pids" ] && stop_cluster "$DIR"
        log "up failed; logs are in $DIR/logs"
    fi
    exit "$rc"
}

cmd_up() {
    [ $# -eq 1 ] || usage
    local missing
    missing=$(missing_binaries)
    [ -z "$missing" ] || die "missing $missing in $BINDIR: run scripts/cluster.sh build"
    need_commands openssl:openssl curl:curl python3:python3
    NODES=${KUBERVISOR_NODES:-1}
    UP_TIMEOUT=${KUBERVISOR_UP_TIMEOUT:-120}
    [[ $NODES =~ ^[1-9][0-9]*$ ]] || die "KUBERVISOR_NODES must be a positive number"
    [[ $UP_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "KUBERVISOR_UP_TIMEOUT must be a number of seconds"

    local plain='^[A-Za-z0-9._/+@:-]+$'
    [[ $1 =~ $plain ]] || die "DIR must be a plain path (no spaces or quotes): $1"
    mkdir -p "$1"
    DIR=$(cd "$1" && pwd)
    [[ $DIR =~ $plain ]] || die "DIR must be a plain path (no spaces or quotes): $DIR"
    local c
    for c in "${COMPONENTS[@]}"; do
        ! component_pid "$DIR" "$c" >/dev/null || die "a cluster is already running in $DIR (scripts/cluster.sh down $DIR)"
    done
    if [ -n "$(ls -A "$DIR")" ] && [ ! -f "$DIR/$MARKER" ]; then
        die "$DIR is not empty and holds no cluster of ours"
    fi
    # A stopped cluster's state is replaced: a cluster always starts empty.
    rm -rf "$DIR/etcd" "$DIR/pki" "$DIR/logs" "$DIR/pids" "$DIR"/*.kubeconfig "$DIR/kubeconfig" \
        "$DIR/kwok.yaml" "$DIR/cluster.env"
    echo "state of a cluster started by scripts/cluster.sh up" >"$DIR/$MARKER"
    mkdir -p "$DIR/logs" "$DIR/pids"

    local start_time
    start_time=$(date +%s)
    DEADLINE=$((start_time + UP_TIMEOUT))
    STARTED=0
    UP_DONE=0
    trap cleanup_failed_up EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    local ports etcd_port peer_port api_port kcm_port sched_port
    ports=$(pick_ports "$DIR" 5)
    read -r etcd_port peer_port api_port kcm_port sched_port <<<"$ports"
    API_URL=https://127.0.0.1:$api_port
    PKI=$DIR/pki
    make_pki
    write_kubeconfig "$DIR/kubeconfig" admin
    write_kubeconfig "$DIR/kube-controller-manager.kubeconfig" kube-controller-manager
    write_kubeconfig "$DIR/kube-scheduler.kubeconfig" kube-scheduler
    write_kubeconfig "$DIR/kwok.kubeconfig" kwok

    local etcd_url=http://127.0.0.1:$etcd_port peer_url=http://127.0.0.1:$peer_port
    start etcd "$BINDIR/etcd" --name=kubervisor-test --data-dir="$DIR/etcd" \
        --listen-client-urls="$etcd_url" --advertise-client-urls="$etcd_url" \
        --listen-peer-urls="$peer_url" --initial-advertise-peer-urls="$peer_url" \
        --initial-cluster="kubervisor-test=$peer_url" --initial-cluster-state=new \
        --unsafe-no-fsync --log-level=warn
    STARTED=1
    LOG_OF=etcd
    wait_until "etcd at $etcd_url" curl -sS --fail --max-time 2 "$etcd_url/health"

    start kube-apiserver "$BINDIR/kube-apiserver" \
        --etcd-servers="$etcd_url" \
        --bind-address=127.0.0.1 --secure-port="$api_port" --advertise-address=127.0.0.1 \
        --endpoint-reconciler-type=none \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" \
        --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
        --requestheader-allowed-names=front-proxy-client \
        --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
        --requestheader-extra-headers-prefix=X-Remote-Extra- \
        --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
        --proxy-client-key-file="$PKI/front-proxy-client.key" \
        --authorization-mode=Node,RBAC \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$PKI/sa.pub" \
        --service-account-signing-key-file="$PKI/sa.key" \
        --allow-privileged=true --profiling=false
    STARTED=2
    LOG_OF=kube-apiserver
    wait_until "kube-apiserver /readyz at $API_URL" healthz_ok --cacert "$PKI/ca.crt" \
        --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$API_URL/readyz"

    local kcm=$DIR/kube-controller-manager.kubeconfig sched=$DIR/kube-scheduler.kubeconfig
    start kube-controller-manager "$BINDIR/kube-controller-manager" \
        --kubeconfig="$kcm" --authentication-kubeconfig="$kcm" --authorization-kubeconfig="$kcm" \
        --bind-address=127.0.0.1 --secure-port="$kcm_port" \
        --leader-elect=false --controllers='*' \
        --use-service-account-credentials=true \
        --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
        --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" --allocate-node-cidrs=false \
        --profiling=false
    start kube-scheduler "$BINDIR/kube-scheduler" \
        --kubeconfig="$sched" --authentication-kubeconfig="$sched" --authorization-kubeconfig="$sched" \
        --bind-address=127.0.0.1 --secure-port="$sched_port" --leader-elect=false --profiling=false
    # kwok's controller, managing only the nodes annotated kwok.x-k8s.io/node=fake, with
    # its default stages: nodes become Ready, pods Running and Ready with a pod IP.
    cat >"$DIR/kwok.yaml" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  cidr: ${POD_CIDR/.0\//.1/}
  nodeIP: $NODE_IP
  manageAllNodes: false
  manageNodesWithAnnotationSelector: kwok.x-k8s.io/node=fake
  # Node Leases, renewed well within the controller-manager's grace period; without them
  # kwok heartbeats node status every ~55 s, past the 50 s grace, and nodes flap NotReady.
  nodeLeaseDurationSeconds: 40
EOF
    start kwok "$BINDIR/kwok" --config="$DIR/kwok.yaml" --kubeconfig="$DIR/kwok.kubeconfig"
    STARTED=5

    local i
    for ((i = 0; i < NODES; i++)); do
        api -o /dev/null -X POST -H 'Content-Type: application/json' "$API_URL/api/v1/nodes" -d '{
  "apiVersion": "v1", "kind": "Node",
  "metadata": {
    "name": "kwok-node-'"$i"'",
    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
    "labels": {"type": "kwok", "kubernetes.io/hostname": "kwok-node-'"$i"'",
               "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
  }
}'
    done
    LOG_OF=kube-controller-manager
    wait_until "kube-controller-manager /healthz" healthz_ok -k "https://127.0.0.1:$kcm_port/healthz"
    LOG_OF=kube-scheduler
    wait_until "kube-scheduler /healthz" healthz_ok -k "https://127.0.0.1:$sched_port/healthz"
    LOG_OF=kwok
    wait_until "$NODES Ready node(s)" nodes_ready
    LOG_OF=kube-controller-manager
    wait_until "the default ServiceAccount" api "$API_URL/api/v1/namespaces/default/serviceaccounts/default"

    cat >"$DIR/cluster.env" <<EOF
# Written by scripts/cluster.sh up; source it.
KUBECONFIG=$DIR/kubeconfig
CLUSTER_DIR=$DIR
CLUSTER_API_URL=$API_URL
CLUSTER_API_PORT=$api_port
CLUSTER_ETCD_URL=$etcd_url
CLUSTER_CONTROLLER_MANAGER_PORT=$kcm_port
CLUSTER_SCHEDULER_PORT=$sched_port
CLUSTER_POD_CIDR=$POD_CIDR
CLUSTER_SERVICE_CIDR=$SERVICE_CIDR
CLUSTER_NODES=$NODES
CLUSTER_KUBERNETES_VERSION=$KUBE_VERSION
CLUSTER_BINDIR=$BINDIR
EOF
    UP_DONE=1
    trap - EXIT INT TERM
    log "cluster up in $(($(date +%s) - start_time)) s: API $API_URL, $NODES node(s), logs in $DIR/logs"
    echo "export KUBECONFIG=$DIR/kubeconfig"
}

cmd_down() {
    local purge=0 dir=
    while [ $# -gt 0 ]; do
        case "$1" in
        --purge) purge=1 ;;
        -*) usage ;;
        *)
            [ -z "$dir" ] || usage
            dir=$1
            ;;
        esac
        shift
    done
    [ -n "$dir" ] || usage
    if [ ! -d "$dir" ]; then
        log "nothing to stop: $dir does not exist"
        return 0
    fi
    dir=$(cd "$dir" && pwd)
    stop_cluster "$dir"
    if [ "$purge" = 1 ]; then
        [ -f "$dir/$MARKER" ] || die "$dir holds no cluster of ours: not deleting it"
        rm -rf "$dir"
    fi
}

# ---------------------------------------------------------------------------------------

# In braces, read whole before it runs: editing this file under a running build is safe.
{
    [ $# -ge 1 ] || usage
    command=$1
    shift
    case "$command" in
    build) cmd_build "$@" ;;
    bindir) cmd_bindir "$@" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    *) usage ;;
    esac
    exit
}

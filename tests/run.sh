#!/usr/bin/env bash
# Run every check pierone has: formatting, lints, licences and advisories, unit tests,
# the storage conformance suites, and the integration tests with real clients.
# Installs what a fresh Debian machine lacks (skopeo, podman, PostgreSQL, the oras Python SDK,
# cargo-deny, and for tests/deploy.sh umoci, systemd-analyze, kubernetes-validate, kubectl)
# and starts a throwaway PostgreSQL cluster for the tests that need one.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pierone-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
step() { printf '\n==> %s\n' "$*"; }

missing=()
have skopeo || missing+=(skopeo)
have podman || missing+=(podman uidmap fuse-overlayfs)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# The TLS and audit tests make certificates and keys with openssl and talk HTTP/2 with curl.
have openssl || missing+=(openssl)
have curl || missing+=(curl)
# tests/deploy.sh: the image (umoci, objcopy, the CA bundle), its chroot run in a network
# namespace (ip), the systemd unit's check (systemd-analyze).
have umoci || missing+=(umoci)
have objcopy || missing+=(binutils)
have ip || missing+=(iproute2)
have systemd-analyze || missing+=(systemd)
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]} from Debian"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import oras' 2>/dev/null; then
    step "installing the oras Python SDK"
    python3 -m pip install -q --disable-pip-version-check -r tests/clients/requirements.txt
fi
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
    step "installing kubernetes-validate"
    python3 -m pip install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi
# kustomize for tests/deploy.sh: a machine without kustomize or kubectl gets Debian's kubectl
# (kustomize built in), unpacked next to the build rather than installed.
if ! have kustomize && ! have kubectl; then
    kubectl_dir="$CARGO_TARGET_DIR/deploy-tools/kubernetes-client"
    if [ ! -x "$kubectl_dir/usr/bin/kubectl" ]; then
        step "unpacking kubectl from Debian's kubernetes-client"
        mkdir -p "$kubectl_dir"
        as_root apt-get update -qq
        (cd "$kubectl_dir/.." && as_root apt-get download -qq kubernetes-client 2>/dev/null \
            && dpkg-deb -x kubernetes-client_*.deb "$kubectl_dir" && rm -f kubernetes-client_*.deb)
    fi
    export KUSTOMIZE="$kubectl_dir/usr/bin/kubectl kustomize"
fi
if ! have cargo-deny; then
    step "installing cargo-deny"
    cargo install --locked --quiet cargo-deny@0.20.2
fi

step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# Advisories need the RustSec database from github.com, which this network does not reach;
# licences, bans and sources are checked offline.
# Every public item of the library crates is documented (`missing_docs`) and every doc link
# resolves.
step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --lib --no-deps --locked
step "cargo deny check bans licenses sources"
cargo deny --log-level error check bans licenses sources
step "starting a throwaway PostgreSQL"
eval "$(tests/postgres.sh start)"
trap 'tests/postgres.sh stop "$PIERONE_TEST_PGDATA"' EXIT

step "cargo test"
cargo test --workspace --locked

# Builds the release binaries and the OCI image (about 10 minutes cold on two cores).
step "deployment: the image, the Kubernetes base, the systemd unit"
tests/deploy.sh

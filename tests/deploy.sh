#!/usr/bin/env bash
# Check what deploy/ ships: the OCI image (reproducible, runs its own entrypoint in a chroot
# with nothing but what the image contains, answers and takes pushes, hosts itself), the
# Kubernetes base (renders with kustomize, validates against Kubernetes' schemas, names only
# the server's real settings) and the systemd unit (systemd-analyze verify and security).
#
#   tests/deploy.sh        # as root: it unpacks the image with its owners and uses a network namespace
#
# Needs: cargo, umoci, skopeo, curl, python3, ip (iproute2), systemd-analyze,
# kubernetes_validate (PyPI: kubernetes-validate) and `kustomize` or `kubectl` (KUSTOMIZE overrides, e.g.
# KUSTOMIZE="/path/to/kubectl kustomize"). tests/run.sh installs them.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
# The Kubernetes versions the manifests are validated against: the newest whose schemas the
# pinned kubernetes-validate bundles, and an older one still in wide use.
read -r -a k8s_versions <<<"${PIERONE_K8S_VERSIONS:-1.37.0 1.34.0}"
k8s_flags=()
for v in "${k8s_versions[@]}"; do k8s_flags+=(-k "$v"); done

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$1"; [ $# -gt 1 ] && printf '%s\n' "$2" | sed 's/^/     /'; }
# check NAME CMD...: passes when CMD exits 0; its output is shown only on failure.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$name"; else fail "$name" "$out"; fi
}

if [ "$(id -u)" != 0 ]; then
    echo "tests/deploy.sh: run as root (chroot, network namespace, image owners)" >&2
    exit 2
fi

work=$(mktemp -d /var/tmp/pierone-deploy-test.XXXXXX)
netns=pierone-deploy-$$
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    ip netns del "$netns" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------
echo "== image: build (release) and reproducibility"
epoch=$(git log -1 --format=%ct)
if ! digest=$(SOURCE_DATE_EPOCH=$epoch deploy/image.sh "$work/a"); then
    fail "deploy/image.sh builds the image"
    echo "deploy: $passed passed, $((failed)) failed"
    exit 1
fi
ok "deploy/image.sh builds the image ($digest)"
tag=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"])' "$work/a/index.json")
again=$(SOURCE_DATE_EPOCH=$epoch PIERONE_IMAGE_NO_BUILD=1 deploy/image.sh "$work/b" 2>/dev/null)
check "the same inputs give the same digest ($again)" test "$digest" = "$again"
check "the layouts are identical file for file" diff -r "$work/a" "$work/b"
check "OUT.digest holds the digest" test "$(cat "$work/a.digest")" = "$digest"
later=$(SOURCE_DATE_EPOCH=$((epoch + 1)) PIERONE_IMAGE_NO_BUILD=1 deploy/image.sh "$work/c" 2>/dev/null)
check "another SOURCE_DATE_EPOCH gives another digest" test "$digest" != "$later"
check "the oci-archive holds the same image" \
    test "$(skopeo inspect --raw "oci-archive:$work/a.tar:$tag" | sha256sum | cut -d' ' -f1)" = "${digest#sha256:}"
rm -rf "$work/b" "$work/b.tar" "$work/c" "$work/c.tar"

# ---------------------------------------------------------------------------------------
echo "== image: configuration and contents"
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
revision=$(git rev-parse HEAD)
check "the configuration: entrypoint, user, port, volume, labels" python3 - "$work/a" "$version" "$revision" "$epoch" <<'PY'
import json, sys, datetime
layout, version, revision, epoch = sys.argv[1:]
blob = lambda d: json.load(open(f"{layout}/blobs/sha256/{d.split(':')[1]}"))
manifest = blob(json.load(open(f"{layout}/index.json"))["manifests"][0]["digest"])
config = blob(manifest["config"]["digest"])
c = config["config"]
want = ["/usr/local/bin/pierone-server", "--listen", "0.0.0.0:5000", "--data-dir", "/data"]
assert c["Entrypoint"] == want, c["Entrypoint"]
assert not c.get("Cmd"), c.get("Cmd")
assert c["User"] == "65532:65532", c["User"]
assert list(c["ExposedPorts"]) == ["5000/tcp"], c["ExposedPorts"]
assert list(c["Volumes"]) == ["/data"], c["Volumes"]
created = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
assert config["created"] == created, (config["created"], created)
assert all(h["created"] == created for h in config["history"]), config["history"]
labels = c["Labels"]
assert labels["org.opencontainers.image.version"] == version, labels
assert labels["org.opencontainers.image.revision"].split("-")[0] == revision, labels
assert labels["org.opencontainers.image.licenses"] == "Apache-2.0", labels
assert labels["org.opencontainers.image.source"].startswith(("https://", "git@", "/")), labels
assert len(manifest["layers"]) == 1, manifest["layers"]
PY

bundle=$work/bundle
umoci unpack --image "$work/a:$tag" "$bundle" >/dev/null
rootfs=$bundle/rootfs
check "the binaries are in the image" test -x "$rootfs/usr/local/bin/pierone-server" -a -x "$rootfs/usr/local/bin/pierone" -a -x "$rootfs/usr/local/bin/docker-credential-pierone"
check "CA certificates are in the image" grep -q 'BEGIN CERTIFICATE' "$rootfs/etc/ssl/certs/ca-certificates.crt"
check "the non-root user is in /etc/passwd" grep -q '^pierone:x:65532:65532:' "$rootfs/etc/passwd"
check "/data belongs to that user" test "$(stat -c %u:%g "$rootfs/data")" = 65532:65532
# Every library the loader maps must come from the image: ldd inside the chroot would need
# ldd there, so ask the image's own loader to list what it loads.
check "every linked library resolves inside the image" bash -c '
    for b in pierone-server pierone docker-credential-pierone; do
        out=$(chroot "$1" /lib64/ld-linux-x86-64.so.2 --list "/usr/local/bin/$b") || exit 1
        if grep -q "not found" <<<"$out"; then echo "$b: $out"; exit 1; fi
    done' _ "$rootfs"
for b in pierone-server pierone; do
    check "$b runs in the image as the non-root user" \
        chroot --userspec=65532:65532 "$rootfs" "/usr/local/bin/$b" --version
done
check "docker-credential-pierone runs in the image" bash -c \
    'chroot --userspec=65532:65532 "$1" /usr/local/bin/docker-credential-pierone list </dev/null; test $? -lt 100' _ "$rootfs"
check "the image holds nothing else" python3 - "$rootfs" <<'PY'
import os, sys
rootfs = sys.argv[1]
found = set()
for d, dirs, files in os.walk(rootfs):
    for f in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
        found.add(os.path.relpath(os.path.join(d, f), rootfs))
expected_prefixes = ("usr/local/bin/", "usr/lib/", "usr/lib64/", "usr/share/doc/", "etc/")
extra = sorted(p for p in found if not p.startswith(expected_prefixes) and p not in ("lib", "lib64"))
assert not extra, extra
libs = sorted(p for p in found if p.startswith(("usr/lib/", "usr/lib64/")))
assert all(".so" in os.path.basename(p) for p in libs), libs
PY

# ---------------------------------------------------------------------------------------
echo "== image: the entrypoint in a chroot, in a network namespace of its own"
ip netns add "$netns"
ip netns exec "$netns" ip link set lo up
inns() { ip netns exec "$netns" "$@"; }
# The entrypoint as the image says it, run as the image's user.
mapfile -t entrypoint < <(python3 -c '
import json, sys
print("\n".join(json.load(open(sys.argv[1]))["process"]["args"]))' "$bundle/config.json")
user=$(python3 -c '
import json, sys
u = json.load(open(sys.argv[1]))["process"]["user"]
print("%d:%d" % (u["uid"], u["gid"]))' "$bundle/config.json")
check "umoci's runtime config runs the entrypoint as 65532:65532" test "$user" = 65532:65532
user=${user:-65532:65532}
refusal=$(inns chroot --userspec="$user" "$rootfs" "${entrypoint[@]}" 2>&1)
rc=$?
if [ $rc -ne 0 ] && grep -q 'refusing to serve 0.0.0.0:5000 without token validation' <<<"$refusal"; then
    ok "without a token validator or --insecure-no-auth the entrypoint refuses to serve 0.0.0.0"
else
    fail "without a token validator or --insecure-no-auth the entrypoint refuses to serve 0.0.0.0" "exit $rc: $refusal"
fi

# Not through inns: a function in the background is a subshell, and $! would be its pid.
ip netns exec "$netns" chroot --userspec="$user" "$rootfs" "${entrypoint[@]}" --insecure-no-auth \
    >"$work/server.log" 2>&1 &
server_pid=$!
base=http://127.0.0.1:5000
for _ in $(seq 100); do
    inns curl -fsS -o /dev/null "$base/v2/" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
check "GET /v2/ answers 200" test "$(inns curl -s -o /dev/null -w '%{http_code}' "$base/v2/")" = 200
check "GET /.well-known/ready answers 200" test "$(inns curl -s -o /dev/null -w '%{http_code}' "$base/.well-known/ready")" = 200
check "GET /.well-known/health answers 200" test "$(inns curl -s -o /dev/null -w '%{http_code}' "$base/.well-known/health")" = 200
# `ip netns exec` and chroot exec, so the pid is the server's own.
check "the server runs as uid 65532" test "$(ps -o uid= -p "$server_pid" | tr -d ' ')" = 65532

# pierone hosting itself: the image pushed into the pierone it contains, pulled back by digest.
repo=127.0.0.1:5000/pierone/pierone
check "skopeo pushes the image into the pierone it contains" inns skopeo copy --quiet \
    --dest-tls-verify=false --digestfile "$work/pushed.digest" "oci:$work/a:$tag" "docker://$repo:$tag"
check "the pushed manifest has the image's digest" test "$(cat "$work/pushed.digest" 2>/dev/null)" = "$digest"
check "the tag names that digest" test "$(inns skopeo inspect --raw --tls-verify=false "docker://$repo:$tag" | sha256sum | cut -d' ' -f1)" = "${digest#sha256:}"
check "skopeo pulls it back by digest" inns skopeo copy --quiet --src-tls-verify=false \
    "docker://$repo@$digest" "oci:$work/pulled:$tag"
check "the pulled image has the same digest and blobs" bash -c '
    test "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[\"manifests\"][0][\"digest\"])" "$2/index.json")" = "$3" &&
    for b in "$1"/blobs/sha256/*; do cmp "$b" "$2/blobs/sha256/${b##*/}" || exit 1; done' _ "$work/a" "$work/pulled" "$digest"
check "the registry stored what it received under /data as the non-root user" \
    test "$(stat -c %u "$rootfs/data/pierone.db" 2>/dev/null)" = 65532
# SIGTERM drains and exits 0 (what Kubernetes and systemd send).
kill -TERM "$server_pid"
rc=0
for _ in $(seq 350); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
wait "$server_pid" 2>/dev/null
rc=$?
server_pid=
check "SIGTERM stops the server with status 0" test "$rc" = 0
[ "$failed" -gt 0 ] && { echo "server log:"; sed 's/^/     /' "$work/server.log"; }

# ---------------------------------------------------------------------------------------
echo "== the server's real settings"
"$CARGO_TARGET_DIR/release/pierone-server" --help >"$work/help.txt"
# Every PIERONE_* variable and every --flag the deploy files set must be one the server has.
check "the Kubernetes manifests and the systemd unit name only real flags and variables" \
    python3 - "$work/help.txt" deploy/kubernetes/deployment.yaml deploy/systemd/pierone.service <<'PY'
import re, sys
help_text = open(sys.argv[1]).read()
flags = set(re.findall(r"--([a-z0-9-]+)", help_text))
envs = set(re.findall(r"\[env: (PIERONE_[A-Z0-9_]+)", help_text))
bad = []
for path in sys.argv[2:]:
    text = open(path).read()
    for f in set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]+)", text)):
        if f not in flags:
            bad.append(f"{path}: --{f}")
    for e in set(re.findall(r"\bPIERONE_[A-Z0-9_]+\b", text)):
        if e not in envs:
            bad.append(f"{path}: {e}")
assert not bad, bad
PY

# ---------------------------------------------------------------------------------------
echo "== Kubernetes"
if [ -n "${KUSTOMIZE:-}" ]; then
    read -r -a kustomize <<<"$KUSTOMIZE"
elif command -v kustomize >/dev/null; then
    kustomize=(kustomize build)
else
    kustomize=(kubectl kustomize)
fi
check "${kustomize[*]} renders deploy/kubernetes" bash -c '"${@:2}" deploy/kubernetes >"$1"' _ "$work/k8s.yaml" "${kustomize[@]}"
check "every resource is valid for Kubernetes ${k8s_versions[*]} (strict)" \
    python3 -m kubernetes_validate --strict --quiet "${k8s_flags[@]}" "$work/k8s.yaml"
check "the rendered base is what the task asks for" python3 - "$work/k8s.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
for k in ["Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "NetworkPolicy", "ServiceAccount"]:
    assert k in by_kind, (k, kinds)
dep = by_kind["Deployment"][0]
spec = dep["spec"]["template"]["spec"]
c = spec["containers"][0]
assert dep["spec"]["replicas"] == 2
assert c["readinessProbe"]["httpGet"]["path"] == "/.well-known/ready"
assert c["livenessProbe"]["httpGet"]["path"] == "/.well-known/health"
assert c["securityContext"]["readOnlyRootFilesystem"] is True
assert c["securityContext"]["allowPrivilegeEscalation"] is False
assert spec["securityContext"]["runAsNonRoot"] is True
assert c["resources"]["requests"] and c["resources"]["limits"]
# The grace period covers the preStop pause plus the server's 30 s drain.
assert spec["terminationGracePeriodSeconds"] >= c["lifecycle"]["preStop"]["sleep"]["seconds"] + 30
env = {e["name"]: e for e in c["env"]}
for name in ["PIERONE_DATABASE_URL", "PIERONE_S3_BUCKET"]:
    assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "pierone", env[name]
assert env["PIERONE_BLOB_STORE"]["value"] == "s3"
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
assert ports == {"http": 5000, "metrics": 9090}, ports
assert env["PIERONE_METRICS_LISTEN"]["value"].endswith(":9090")
# The ConfigMap the pod mounts is the generated one, with both files.
cms = {d["metadata"]["name"]: d for d in by_kind["ConfigMap"]}
mounted = [v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v]
assert mounted and all(m in cms for m in mounted), (mounted, list(cms))
assert {"teams.yaml", "trust-policy.yaml"} <= set(cms[mounted[0]]["data"])
assert env["PIERONE_TEAMS_FILE"]["value"] == "/etc/pierone/teams.yaml"
services = {d["metadata"]["name"]: d for d in by_kind["Service"]}
assert [p["targetPort"] for p in services["pierone-metrics"]["spec"]["ports"]] == ["metrics"]
assert [p["targetPort"] for p in services["pierone"]["spec"]["ports"]] == ["http"]
selector = dep["spec"]["selector"]["matchLabels"]
labels = dep["spec"]["template"]["metadata"]["labels"]
for d in [*by_kind["Service"], *by_kind["PodDisruptionBudget"], *by_kind["NetworkPolicy"]]:
    sel = d["spec"].get("selector") or d["spec"].get("podSelector")
    sel = sel.get("matchLabels", sel)
    assert all(labels.get(k) == v for k, v in sel.items()), (d["metadata"]["name"], sel)
np = by_kind["NetworkPolicy"][0]["spec"]
assert set(np["policyTypes"]) == {"Ingress", "Egress"}
PY
# Broken manifests must fail the validation, or the check above proves nothing.
sed 's/^  replicas: 2$/  replicas: two/' "$work/k8s.yaml" >"$work/k8s-badtype.yaml"
sed 's/^  replicas: 2$/  replica: 2/' "$work/k8s.yaml" >"$work/k8s-unknown.yaml"
for broken in badtype unknown; do
    check "a manifest with a wrong field ($broken) fails the validation" bash -c \
        '! python3 -m kubernetes_validate --strict --quiet "${@:2}" "$1" >/dev/null 2>&1' \
        _ "$work/k8s-$broken.yaml" "${k8s_flags[@]}"
done

# ---------------------------------------------------------------------------------------
echo "== systemd"
# verify wants ExecStart's binary to exist: point it at the one just built.
mkdir -p "$work/systemd"
sed "s|/usr/local/bin/pierone-server|$CARGO_TARGET_DIR/release/pierone-server|" \
    deploy/systemd/pierone.service >"$work/systemd/pierone.service"
if out=$(systemd-analyze verify "$work/systemd/pierone.service" 2>&1) && [ -z "$out" ]; then
    ok "systemd-analyze verify accepts pierone.service without a warning"
else
    fail "systemd-analyze verify accepts pierone.service without a warning" "$out"
fi
check "systemd-analyze security rates the unit's exposure at most 2.0" \
    systemd-analyze security --offline=yes --threshold=20 --no-pager "$work/systemd/pierone.service"
check "the unit sets the required hardening" bash -c '
    for d in DynamicUser=yes StateDirectory=pierone ProtectSystem=strict NoNewPrivileges=yes \
             "CapabilityBoundingSet=" SystemCallFilter=@system-service; do
        grep -qx "$d" "$1" || { echo "missing $d"; exit 1; }
    done' _ deploy/systemd/pierone.service
sed 's/^ProtectSystem=strict$/ProtectSystem=very/' "$work/systemd/pierone.service" >"$work/systemd/broken.service"
check "a unit with an invalid setting draws a warning" bash -c \
    'test -n "$(systemd-analyze verify "$1" 2>&1)"' _ "$work/systemd/broken.service"

echo
echo "deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# Build pierone's OCI image without downloading a base image: the release binaries, exactly the
# shared libraries they link, CA certificates and a non-root user, in one layer.
#
#   deploy/image.sh [OUT_DIR]        # default: target/oci/pierone (an OCI image layout)
#
# The image is reproducible: the same binaries, certificates and revision give the same
# manifest digest (fixed mtimes from SOURCE_DATE_EPOCH, sorted tar entries, fixed `created`).
# The digest is printed on stdout and written to OUT_DIR.digest; OUT_DIR.tar is the same image
# as an oci-archive.
#
# Environment:
#   SOURCE_DATE_EPOCH      mtime of every file and the image's `created` (default: the
#                          commit time of HEAD)
#   PIERONE_IMAGE_TAG      tag inside the layout (default: the workspace version)
#   PIERONE_IMAGE_SOURCE   org.opencontainers.image.source (default: the git remote `origin`)
#   PIERONE_IMAGE_NO_BUILD set to 1 to package the binaries already in
#                          $CARGO_TARGET_DIR/release instead of running cargo build
# Needs: cargo, python3, umoci, ldd, objcopy (binutils).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

out=${1:-$root/target/oci/pierone}
case $out in /*) ;; *) out=$PWD/$out ;; esac
target=${CARGO_TARGET_DIR:-$root/target}
bins=(pierone-server pierone docker-credential-pierone)
# The user the server runs as: an unprivileged id no distribution hands out to people.
uid=65532

for tool in umoci python3 ldd objcopy; do
    command -v "$tool" >/dev/null || { echo "image.sh: $tool is needed (apt-get install umoci binutils)" >&2; exit 1; }
done

if [ "${PIERONE_IMAGE_NO_BUILD:-0}" != 1 ]; then
    echo "image.sh: cargo build --release" >&2
    # Without SOURCE_DATE_EPOCH: the C build scripts (ring, aws-lc-sys, SQLite, libpq) rerun
    # when it changes, which would rebuild half the tree whenever the epoch differs.
    env -u SOURCE_DATE_EPOCH nice -n 10 cargo build --release --locked -p pierone-server -p pierone-cli \
        --bin pierone-server --bin pierone --bin docker-credential-pierone >&2
fi

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
licenses=$(sed -n '/^\[workspace.package\]/,/^\[/s/^license = "\(.*\)"/\1/p' Cargo.toml)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# A dirty tree builds something no commit names: say so rather than lie in the label.
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    revision=$revision-dirty
fi
source_url=${PIERONE_IMAGE_SOURCE:-$(git config --get remote.origin.url 2>/dev/null || true)}
source_url=${source_url:-https://github.com/zalando-stups/pierone}
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
tag=${PIERONE_IMAGE_TAG:-$version}

work=$(mktemp -d "${TMPDIR:-/tmp}/pierone-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/files"

# Debug line tables would quadruple the image; symbols stay, so backtraces keep their names.
binpaths=()
for b in "${bins[@]}"; do
    objcopy --strip-debug "$target/release/$b" "$work/files/$b"
    binpaths+=("$target/release/$b")
done

# Exactly the libraries the binaries link, found the way the loader finds them. The image
# has a merged /usr like Debian: /lib and /lib64 are links into /usr.
libs=$(ldd "${binpaths[@]}" | awk '
    /=>/ { if ($3 ~ /^\//) print $3; next }
    $1 ~ /^\// && $2 ~ /^\(0x/ { print $1 }' | sort -u)
[ -n "$libs" ] || { echo "image.sh: ldd found no libraries (a static build needs no change here)" >&2; }

certs=/etc/ssl/certs/ca-certificates.crt
[ -f "$certs" ] || { echo "image.sh: $certs is missing (apt-get install ca-certificates)" >&2; exit 1; }

# Licences of what the image ships besides pierone, where the host keeps them.
copyrights=()
for lib in $libs; do
    pkg=$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null | head -n1 | cut -d: -f1 || true)
    [ -n "$pkg" ] && [ -f "/usr/share/doc/$pkg/copyright" ] && copyrights+=("/usr/share/doc/$pkg/copyright")
done
[ -f /usr/share/doc/ca-certificates/copyright ] && copyrights+=(/usr/share/doc/ca-certificates/copyright)

# The layer, written by Python's tarfile so that every entry's owner, mode and mtime is set
# here rather than taken from the build machine.
python3 - "$work/layer.tar" "$epoch" "$uid" "$work/files" "$certs" "$root" \
    "${bins[*]}" "$libs" "${copyrights[*]:-}" <<'PY'
import io, os, sys, tarfile

out, epoch, uid, files, certs, root, bins, libs, copyrights = sys.argv[1:]
epoch, uid = int(epoch), int(uid)
entries = {}  # path in the image -> TarInfo plus bytes

def add_dir(path, mode=0o755, owner=0):
    parts = path.split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        if parent not in entries:
            add_dir(parent)
    t = tarfile.TarInfo(path)
    t.type, t.mode, t.uid, t.gid = tarfile.DIRTYPE, mode, owner, owner
    entries[path] = (t, None)

def add_file(path, data, mode=0o644):
    add_dir(os.path.dirname(path)) if os.path.dirname(path) not in entries else None
    t = tarfile.TarInfo(path)
    t.mode, t.size = mode, len(data)
    entries[path] = (t, data)

def add_link(path, target):
    t = tarfile.TarInfo(path)
    t.type, t.linkname, t.mode = tarfile.SYMTYPE, target, 0o777
    entries[path] = (t, None)

def read(p):
    with open(p, "rb") as f:
        return f.read()

add_dir("usr/lib")
add_dir("usr/lib64")
add_link("lib", "usr/lib")
add_link("lib64", "usr/lib64")
add_dir("tmp", 0o1777)
add_dir("data", 0o750, uid)

for b in bins.split():
    add_file("usr/local/bin/" + b, read(os.path.join(files, b)), 0o755)
for lib in libs.split():
    inside = lib.lstrip("/")
    if inside.startswith("lib"):  # /lib/... and /lib64/... live in /usr
        inside = "usr/" + inside
    add_file(inside, read(os.path.realpath(lib)), 0o755)
for c in copyrights.split():
    add_file(c.lstrip("/"), read(c))
add_file("usr/share/doc/pierone/README.md", read(os.path.join(root, "README.md")))
add_file("etc/ssl/certs/ca-certificates.crt", read(certs))
add_file("etc/passwd",
         "root:x:0:0:root:/root:/usr/sbin/nologin\n"
         f"pierone:x:{uid}:{uid}:Pier One:/data:/usr/sbin/nologin\n"
         "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n".encode())
add_file("etc/group", f"root:x:0:\npierone:x:{uid}:\nnogroup:x:65534:\n".encode())
# glibc resolves names with its built-in files and dns modules; say so, since the
# image has no other NSS module to fall back on.
add_file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")

with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
    for path in sorted(entries):
        t, data = entries[path]
        t.mtime = epoch
        t.uname = t.gname = ""
        tar.addfile(t, io.BytesIO(data) if data is not None else None)
PY

rm -rf "$out" "$out.tar"
mkdir -p "$(dirname "$out")"
umoci init --layout "$out"
umoci new --image "$out:$tag"
umoci raw add-layer --image "$out:$tag" \
    --history.created "$created" --history.created_by "deploy/image.sh" \
    --history.comment "pierone $version binaries, their libraries, CA certificates" \
    "$work/layer.tar"
umoci config --image "$out:$tag" --no-history \
    --created "$created" \
    --config.user "$uid:$uid" \
    --config.workingdir /data \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --config.entrypoint /usr/local/bin/pierone-server \
    --config.entrypoint --listen --config.entrypoint 0.0.0.0:5000 \
    --config.entrypoint --data-dir --config.entrypoint /data \
    --config.exposedports 5000/tcp \
    --config.volume /data \
    --config.stopsignal SIGTERM \
    --config.label "org.opencontainers.image.title=pierone" \
    --config.label "org.opencontainers.image.description=Docker/OCI registry with immutable tags" \
    --config.label "org.opencontainers.image.source=$source_url" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.revision=$revision" \
    --config.label "org.opencontainers.image.licenses=$licenses" \
    --config.label "org.opencontainers.image.created=$created"
# Drop the blobs of the intermediate configs and manifests umoci wrote on the way.
umoci gc --layout "$out"

digest=$(python3 -c '
import json, sys
index = json.load(open(sys.argv[1] + "/index.json"))
print(index["manifests"][0]["digest"])' "$out")
echo "$digest" >"$out.digest"
if command -v skopeo >/dev/null; then
    skopeo copy --quiet "oci:$out:$tag" "oci-archive:$out.tar:$tag" >&2
fi
echo "image.sh: oci:$out:$tag $digest" >&2
echo "$digest"

#!/usr/bin/env bash
# Installs what Ferry needs on a Debian 12 client, idempotently:
# runc, CRIU, Nomad, Consul, CNI plugins, an OCI registry and the tools the
# tests use. Builds are kept in FERRY_CACHE and reused on the next run.
set -euo pipefail

CACHE=${FERRY_CACHE:-/var/cache/ferry}
BIN=${FERRY_BIN:-/usr/local/bin}
RUNC_VERSION=1.3.3
CRIU_VERSION=4.2.1
CRIU_DEB=4.2.1-1
NOMAD_VERSION=1.11.3
NOMAD_API=v0.0.0-20260907080526-08ef8f3d26da
CONSUL_VERSION=1.20.6

log() { printf '==> %s\n' "$*" >&2; }
mkdir -p "$CACHE" "$BIN"
export GOFLAGS=-mod=mod

apt_packages=(
  build-essential pkg-config git curl jq iproute2 iptables psmisc socat util-linux
  libseccomp-dev
  libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler libnl-3-dev
  libnet1-dev libcap-dev libgnutls28-dev libnftables-dev libbsd-dev uuid-dev
  containernetworking-plugins docker-registry skopeo umoci busybox-static
  qemu-user-static binfmt-support
  shellcheck zip unzip
)

install_apt() {
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # The Debian registry service is not wanted: the dev cluster runs its own.
  if command -v systemctl >/dev/null && systemctl is-active -q docker-registry 2>/dev/null; then
    systemctl disable --now docker-registry || true
  fi
}

# go_binary NAME MODULE VERSION [replace lines...]: build MODULE@VERSION in a
# throwaway module under the cache, so its dependency graph is its own.
go_binary() {
  local name=$1 module=$2 version=$3; shift 3
  local out="$CACHE/bin/$name-$version"
  if [[ ! -x $out ]]; then
    log "building $name $version (cached in $out)"
    local dir="$CACHE/build/$name-$version"
    rm -rf "$dir"; mkdir -p "$dir" "$CACHE/bin"
    (
      cd "$dir"
      go mod init "ferry.local/build/$name" >/dev/null 2>&1
      go mod edit -require="$module@v$version"
      for r in "$@"; do go mod edit "$r"; done
      GONOSUMDB=github.com/hashicorp go build -mod=mod -trimpath -o "$out.tmp" "$module"
      mv "$out.tmp" "$out"
    )
  fi
  install -m 0755 "$out" "$BIN/$name"
}

install_runc() {
  local out="$CACHE/bin/runc-$RUNC_VERSION"
  if [[ ! -x $out ]]; then
    log "building runc $RUNC_VERSION"
    local src
    src=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/opencontainers/runc@v$RUNC_VERSION" | jq -r .Dir)
    local dir="$CACHE/build/runc-$RUNC_VERSION"
    rm -rf "$dir"; mkdir -p "$dir" "$CACHE/bin"
    cp -r "$src/." "$dir"; chmod -R u+w "$dir"
    (
      cd "$dir"
      go mod edit -dropreplace github.com/opencontainers/selinux
      GOFLAGS=-mod=mod go build -trimpath -tags seccomp \
        -ldflags "-X main.version=$RUNC_VERSION -X main.gitCommit=v$RUNC_VERSION" -o "$out.tmp" .
      mv "$out.tmp" "$out"
    )
  fi
  install -m 0755 "$out" "$BIN/runc"
}

criu_ok() {
  command -v criu >/dev/null || return 1
  local v; v=$(criu --version 2>/dev/null | awk '/^Version/ {print $2}')
  [[ -n $v ]] || return 1
  dpkg --compare-versions "$v" ge 4.2 || return 1
  criu check >/dev/null 2>&1
}

install_criu() {
  local out="$CACHE/bin/criu-$CRIU_VERSION"
  if [[ ! -x $out ]]; then
    criu_ok && return 0
    log "building criu $CRIU_VERSION from Debian's source"
    local list=/etc/apt/sources.list.d/ferry-sid-src.list
    if [[ ! -f $list ]]; then
      echo "deb-src http://deb.debian.org/debian sid main" >"$list"
      apt-get update -qq
    fi
    local dl="$CACHE/src/criu"
    mkdir -p "$dl"
    local orig="$dl/criu_$CRIU_VERSION.orig.tar.xz"
    if [[ ! -f $orig ]]; then
      (cd "$dl" && apt-get source --download-only "criu=$CRIU_DEB" >/dev/null 2>&1) || true
    fi
    [[ -f $orig ]] || { echo "criu: could not fetch $orig" >&2; exit 1; }
    local dsc="$dl/criu_$CRIU_DEB.dsc"
    if [[ -f $dsc ]]; then
      local want; want=$(awk '/^Checksums-Sha256:/ {f=1; next} f && /orig.tar.xz/ {print $1; exit}' "$dsc")
      local got; got=$(sha256sum "$orig" | cut -d' ' -f1)
      [[ -z $want || $want == "$got" ]] || { echo "criu: sha256 of $orig is $got, .dsc says $want" >&2; exit 1; }
    fi
    local dir="$CACHE/build/criu-$CRIU_VERSION"
    rm -rf "$dir"; mkdir -p "$dir" "$CACHE/bin"
    tar -C "$dir" --strip-components=1 -xf "$orig"
    make -C "$dir" -j"$(nproc)" criu >"$CACHE/build/criu.log" 2>&1 || { tail -30 "$CACHE/build/criu.log" >&2; exit 1; }
    cp "$dir/criu/criu" "$out"
  fi
  install -m 0755 "$out" "$BIN/criu"
}

# binfmt: arm64 binaries run under qemu-user-static (tests of mixed-platform
# images). The F flag of Debian's registration makes it work in containers.
enable_binfmt() {
  local dir=/proc/sys/fs/binfmt_misc
  if [[ ! -e $dir/register ]]; then
    mount -t binfmt_misc binfmt_misc "$dir" 2>/dev/null || { log "binfmt_misc unavailable: arm64 images will not run here"; return 0; }
  fi
  [[ -e $dir/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 ||
    log "could not register qemu-aarch64 with binfmt_misc"
}

# podman: the peer `make bench-migrate` measures (`scripts/deps.sh podman`
# installs only that). Debian's crun cannot checkpoint; the benchmark points
# Podman at our runc.
if [[ ${1:-} == podman ]]; then
  command -v podman >/dev/null || {
    log "apt-get install podman"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman >/dev/null
  }
  exit 0
fi

install_apt
enable_binfmt
install_runc
install_criu
go_binary nomad github.com/hashicorp/nomad "$NOMAD_VERSION" \
  "-require=github.com/hashicorp/nomad/api@$NOMAD_API" \
  "-replace=github.com/Microsoft/go-winio=github.com/endocrimes/go-winio@v0.4.13-0.20190628114223-fb47a8b41948" \
  "-replace=github.com/hashicorp/hcl=github.com/hashicorp/hcl@v1.0.1-nomad-1"
go_binary consul github.com/hashicorp/consul "$CONSUL_VERSION" \
  "-exclude=github.com/hashicorp/go-msgpack@v1.1.5" \
  "-exclude=github.com/hashicorp/go-msgpack@v1.1.6"
log "runc $(runc --version | head -1 | awk '{print $3}'), criu $(criu --version | awk '/^Version/ {print $2}'), $(nomad version | head -1), $(consul version | head -1)"

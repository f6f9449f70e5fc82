#!/usr/bin/env bash
# Ferry's release artefacts, run by `make release [VERSION=x.y.z] [RELEASE_DIR=DIR]`:
#
#   scripts/release.sh DIR    (VERSION and LDFLAGS come from the GNUmakefile)
#
# Builds nomad-driver-ferry and ferry-companion for linux/amd64 and
# linux/arm64, static (CGO_ENABLED=0) and with -trimpath, stamped with VERSION
# as `make build` stamps it, and checks each binary's ELF header against its
# platform: machine, 64-bit executable, no program interpreter. DIR gets
#
#   nomad-driver-ferry_VERSION_linux_amd64.zip   the binary, LICENSE, THIRD_PARTY_LICENSES
#   nomad-driver-ferry_VERSION_linux_arm64.zip
#   ferry-companion_VERSION_linux_amd64.zip
#   ferry-companion_VERSION_linux_arm64.zip
#   THIRD_PARTY_LICENSES                         every module in the binaries, its licence, the texts
#   SHA256SUMS                                   sha256sum format, over the files above
#
# One zip per binary and platform, named NAME_VERSION_OS_ARCH.zip, is how
# HashiCorp ships Nomad and its plugins, so operators' tooling for those fits
# Ferry too; a zip keeps the executable bit and carries the licences with the
# binary. SHA256SUMS covers the zips and THIRD_PARTY_LICENSES, for
# `sha256sum -c --ignore-missing SHA256SUMS` next to some of them.
#
# A module whose licence this script cannot name fails the release: extend
# classify below after reading its licence.
set -euo pipefail

PLATFORMS=(linux/amd64 linux/arm64)
# name:package of each binary
BINARIES=(nomad-driver-ferry:./driver/cmd/nomad-driver-ferry ferry-companion:./companion/cmd/ferry-companion)

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf '==> ERROR: %s\n' "$*" >&2
  exit 1
}

[[ $# -eq 1 && -n $1 ]] || die "usage: VERSION=x.y.z LDFLAGS=... $0 DIR (run it as: make release [RELEASE_DIR=DIR] [VERSION=x.y.z])"
: "${VERSION:?VERSION is not set: run make release}"
: "${LDFLAGS:?LDFLAGS is not set: run make release}"
GO=${GO:-go}

# Nomad takes plugin versions in semver form; the version is also part of
# file names, between underscores.
semver='^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$'
[[ $VERSION =~ $semver ]] || die "VERSION $VERSION is not a semantic version (x.y.z[-pre][+build])"

for tool in "$GO" readelf zip sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install -y binutils zip coreutils)"
done

mkdir -p "$1"
out=$(cd "$1" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# Zip entries carry these files' times: the commit's, so that the same
# commit and version give the same zips.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

# check_elf FILE ARCH fails unless FILE is a 64-bit static Linux executable
# for ARCH.
check_elf() {
  local file=$1 arch=$2 want headers machine class type
  case $arch in
  amd64) want="Advanced Micro Devices X86-64" ;; # EM_X86_64
  arm64) want="AArch64" ;;                       # EM_AARCH64
  *) die "no ELF machine known for $arch" ;;
  esac
  headers=$(LC_ALL=C readelf -h -l -W "$file") || die "$file: not an ELF file"
  field() { sed -n "s/^ *$1: *//p" <<<"$headers" | head -1; }
  machine=$(field Machine)
  class=$(field Class)
  type=$(field Type)
  [[ $machine == "$want" ]] || die "$file: ELF machine is '$machine', want '$want' for $arch"
  [[ $class == ELF64 ]] || die "$file: ELF class is '$class', want ELF64"
  [[ $type == EXEC* || $type == DYN* ]] || die "$file: ELF type is '$type', want an executable"
  if grep -qE '^ *INTERP ' <<<"$headers"; then
    die "$file: not static, it has a program interpreter (PT_INTERP): $(grep -o 'Requesting program interpreter: [^]]*' <<<"$headers")"
  fi
}

rm -f "$out"/nomad-driver-ferry_*.zip "$out"/ferry-companion_*.zip "$out/THIRD_PARTY_LICENSES" "$out/SHA256SUMS"

host="$("$GO" env GOHOSTOS)/$("$GO" env GOHOSTARCH)"
built=()
for platform in "${PLATFORMS[@]}"; do
  os=${platform%/*} arch=${platform#*/}
  for b in "${BINARIES[@]}"; do
    name=${b%%:*} pkg=${b#*:}
    bin="$stage/${os}_$arch/$name"
    log "build $name $VERSION for $platform"
    # GOAMD64/GOARM64 at their defaults: the binaries run on every CPU of
    # the architecture, whatever this environment says.
    CGO_ENABLED=0 GOOS=$os GOARCH=$arch GOAMD64=v1 GOARM64=v8.0 \
      "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$bin" "$pkg"
    check_elf "$bin" "$arch"
    grep -qaF -- "$VERSION" "$bin" || die "$bin: version $VERSION is not stamped in it"
    if [[ $platform == "$host" ]]; then
      got=$("$bin" version) || die "$bin version failed"
      [[ $got == "$name $VERSION" ]] || die "$bin version prints '$got', want '$name $VERSION'"
    fi
    built+=("$bin")
  done
done
log "ELF headers match the platforms: static, x86-64 for amd64, AArch64 for arm64"

# stated FILE prints the licence expression FILE's first lines state
# (SPDX-License-Identifier: BSD-3-Clause AND MPL-2.0), if any.
stated() {
  local line
  line=$(head -5 "$1" | grep -oE 'SPDX-License-Identifier: *[A-Za-z0-9.+-]+( +(AND|OR|WITH) +[A-Za-z0-9.+-]+)*' | head -1 || true)
  if [[ $line =~ :\ *(.+) ]]; then echo "${BASH_REMATCH[1]}"; fi
}

# classify FILE prints the SPDX identifiers of the licence texts in FILE
# (one file may hold several, each for some of the code), or "unknown".
classify() {
  local f=$1 ids=()
  grep -q 'Business Source License' "$f" && ids+=(BUSL-1.1)
  grep -q 'Mozilla Public License' "$f" && grep -qE '[Vv]ersion 2\.0' "$f" && ids+=(MPL-2.0)
  grep -q 'Apache License' "$f" && grep -q 'Version 2\.0' "$f" && ids+=(Apache-2.0)
  grep -q 'Permission is hereby granted, free of charge' "$f" && ids+=(MIT)
  if grep -q 'Redistribution and use in source and binary forms' "$f"; then
    if grep -qiE 'neither the name|names of (its|the) contributors' "$f"; then ids+=(BSD-3-Clause); else ids+=(BSD-2-Clause); fi
  fi
  grep -qE 'Permission to use, copy, modify, and(/or)? distribute this software for any' "$f" && ids+=(ISC)
  grep -q 'Unicode, Inc' "$f" && grep -q 'unicode.org/copyright' "$f" && ids+=(Unicode-DFS-2016)
  echo "${ids[*]:-unknown}"
}

# label FILE: what FILE states, else the licences its texts are.
label() {
  local s
  s=$(stated "$1")
  if [[ -n $s ]]; then echo "$s"; else classify "$1" | sed 's/ / AND /g'; fi
}

# licence_files DIR lists DIR's licence and notice files, not those for
# documentation only (e.g. LICENSE.docs).
licence_files() {
  find "$1" -maxdepth 1 -type f \( -iname 'licen[cs]e*' -o -iname 'copying*' -o -iname 'notice*' \) \
    ! -iname '*.docs' | LC_ALL=C sort
}

# The modules are those the binaries record (go version -m), so each
# platform's own dependencies are included; `go list -m` in this module
# finds them (after replace directives) in the module cache.
log "licences of the modules in the binaries"
mapfile -t paths < <("$GO" version -m "${built[@]}" | awk '$1 == "dep" { print $2 }' | LC_ALL=C sort -u)
(( ${#paths[@]} > 0 )) || die "go version -m lists no modules in the binaries"
modules=$("$GO" list -m -f '{{with .Replace}}{{.Path}}{{"\t"}}{{or .Version "-"}}{{else}}{{.Path}}{{"\t"}}{{.Version}}{{end}}{{"\t"}}{{.Dir}}' "${paths[@]}")

goversion=$("$GO" env GOVERSION)
goroot=$("$GO" env GOROOT)
summary=$(printf '%s\t%s\t%s\n' "Go standard library" "$goversion" "$(label "$goroot/LICENSE")")
texts="$stage/texts"
: >"$texts"
declare -A seen=()
# add_text MODULE VERSION FILE LICENCE appends FILE's text, or a reference
# to the same text already there.
add_text() {
  local sum
  sum=$(sha256sum <"$3" | cut -d' ' -f1)
  {
    printf '\n================================================================================\n'
    printf '%s %s: %s (%s)\n' "$1" "$2" "${3##*/}" "$4"
    printf -- '--------------------------------------------------------------------------------\n'
    if [[ -n ${seen[$sum]:-} ]]; then
      printf 'The same text as %s.\n' "${seen[$sum]}"
    else
      cat "$3"
      seen[$sum]="$1 $2: ${3##*/}"
    fi
  } >>"$texts"
}
add_text "Go standard library" "$goversion" "$goroot/LICENSE" "$(label "$goroot/LICENSE")"

unknown=()
while IFS=$'\t' read -r path version dir; do
  [[ -n $dir && -d $dir ]] || die "$path $version: not in the module cache (go mod download $path)"
  mapfile -t files < <(licence_files "$dir")
  ids=() expression="" nfiles=0
  for f in "${files[@]}"; do
    [[ ${f##*/} =~ ^[Nn][Oo][Tt][Ii][Cc][Ee] ]] && continue
    nfiles=$((nfiles + 1))
    # An expression the authors state is the module's licence; otherwise
    # every licence its files hold applies, each to some of its code.
    s=$(stated "$f")
    [[ -n $s ]] && expression=$s
    read -ra found <<<"$(classify "$f")"
    [[ -z $s && ${found[*]} == unknown ]] && unknown+=("$f")
    ids+=("${found[@]}")
  done
  (( nfiles > 0 )) || { unknown+=("$dir (no licence file)"); continue; }
  if [[ -n $expression ]]; then
    licence=$expression
  else
    licence=$(printf '%s\n' "${ids[@]}" | LC_ALL=C sort -u | paste -sd' ' | sed 's/ / AND /g')
  fi
  summary+=$'\n'$(printf '%s\t%s\t%s' "$path" "$version" "$licence")
  for f in "${files[@]}"; do
    if [[ ${f##*/} =~ ^[Nn][Oo][Tt][Ii][Cc][Ee] ]]; then
      add_text "$path" "$version" "$f" "notice"
    else
      add_text "$path" "$version" "$f" "$(label "$f")"
    fi
  done
done <<<"$modules"
if (( ${#unknown[@]} > 0 )); then
  die "licences not recognised, read them and extend classify in $0: ${unknown[*]}"
fi

platforms=${PLATFORMS[*]}
{
  cat <<EOF
Third-party software in Ferry $VERSION: nomad-driver-ferry and ferry-companion
for ${platforms// / and }.

Ferry's own code is under the Mozilla Public License 2.0 (LICENSE). The
binaries also contain the Go standard library and the Go modules below, each
under its own licence. The list is made from the modules the binaries record
(go version -m) and each module's licence files, whose texts follow it; where
a source file states its own licence (SPDX-License-Identifier), that applies
to it.

EOF
  printf '%s\n' "$summary" | awk -F'\t' '{ printf "%-58s %-36s %s\n", $1, $2, $3 }'
  cat "$texts"
} >"$out/THIRD_PARTY_LICENSES"

log "zip into $out"
cp "$root/LICENSE" "$stage/LICENSE"
cp "$out/THIRD_PARTY_LICENSES" "$stage/THIRD_PARTY_LICENSES"
zips=()
for bin in "${built[@]}"; do
  dir=${bin%/*}
  platform=${dir##*/}
  name=${bin##*/}
  zip="$out/${name}_${VERSION}_$platform.zip"
  chmod 0755 "$bin"
  touch -d "@$epoch" "$bin" "$stage/LICENSE" "$stage/THIRD_PARTY_LICENSES"
  # -X: no uid/gid or extra times; TZ=UTC: zip stores local times.
  TZ=UTC zip -q -X -j "$zip" "$bin" "$stage/LICENSE" "$stage/THIRD_PARTY_LICENSES"
  zips+=("${zip##*/}")
done

(cd "$out" && sha256sum -- "${zips[@]}" THIRD_PARTY_LICENSES >SHA256SUMS && sha256sum -c --strict --quiet SHA256SUMS)
log "release $VERSION in $out:"
(cd "$out" && ls -l -- "${zips[@]}" THIRD_PARTY_LICENSES SHA256SUMS) >&2

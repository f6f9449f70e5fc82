#!/usr/bin/env bash
# Builds a small busybox image (OCI layout, with umoci) and pushes it with
# skopeo: scripts/image.sh HOST:PORT/REPO:TAG
set -euo pipefail
dest=${1:?usage: image.sh HOST:PORT/REPO:TAG}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
umoci init --layout oci >/dev/null
umoci new --image oci:img >/dev/null
umoci unpack --rootless --image oci:img bundle >/dev/null 2>&1 || umoci unpack --image oci:img bundle >/dev/null
root=bundle/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root"
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [[ -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
umoci repack --image oci:img bundle >/dev/null
umoci config --image oci:img --config.env PATH=/bin --config.cmd /bin/sh --architecture amd64 --os linux >/dev/null
skopeo copy --quiet --dest-tls-verify=false oci:oci:img "docker://$dest"
echo "pushed $dest"

package checkpoint

import (
	"github.com/ferry-nomad/ferry/driver/image"
)

// What a received rootfs.tar may put on the node. The archive is the
// task's overlay upper directory, which the task's own processes wrote and
// another node packed, so unpackTree keeps only what the overlay and the
// container need:
//
//   - a character device 0:0 is an overlay whiteout and is created; any
//     other character or block device is not (nor a hard link to one):
//     runc gives the container its /dev;
//   - FIFOs are created: they give access to nothing but themselves;
//   - of the "trusted.*" extended attributes only the overlay's opaque
//     directory marker ("trusted.overlay.opaque" = "y") is set: the others
//     would steer overlayfs (redirects, metacopy, whiteouts) or anything
//     else that trusts the namespace. "user.*" ones (but "user.overlay.*"),
//     file capabilities and POSIX ACLs are set as the container could set
//     them itself; other "security.*" labels and namespaces are dropped.

// overlayOpaque is the xattr, and its value, overlayfs sets on a directory
// of the upper directory that hides the lower one.
const (
	overlayOpaque      = "trusted.overlay.opaque"
	overlayOpaqueValue = "y"
)

// keepXattr reports whether the extended attribute name, with value, of an
// archived entry is set on the unpacked file: what image.KeepXattr keeps
// of a layer, and the overlay's opaque-directory marker of the task's
// upper directory.
func keepXattr(name, value string) bool {
	if name == overlayOpaque {
		return value == overlayOpaqueValue
	}
	return image.KeepXattr(name)
}

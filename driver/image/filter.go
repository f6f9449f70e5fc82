package image

import (
	"archive/tar"
	"strings"
)

// What a layer may put on the node. An image comes from whoever submits
// the job, and its layers are unpacked by root on the node, so the
// unpacker keeps only what a container needs from its image:
//
//   - character and block devices are not created: runc gives the
//     container its /dev, and a device node in a rootfs is a way to
//     reach the node's disks and memory from a file that the node's own
//     processes may come across. A character device 0:0 (how overlayfs,
//     and layers written from an overlay upper directory, mark a
//     removed file) is a whiteout: it is kept as a ".wh.<name>" marker;
//     likewise a directory with "trusted.overlay.opaque" = "y" gets a
//     ".wh..wh..opq" marker. Hard links to a device node that was not
//     created are left out too;
//   - FIFOs are created: they give access to nothing but themselves;
//   - extended attributes are set only when the kernel would let the
//     container set them itself or they describe the file alone (see
//     KeepXattr); "trusted.*" ones (which overlayfs reads as whiteouts,
//     opaque directories and redirects) and the other security labels
//     are dropped.

// KeepXattr reports whether an extended attribute of a layer entry is set
// on the unpacked file. Kept: "user.*" (but "user.overlay.*", which an
// overlay mounted with userxattr reads as its own markers), file
// capabilities ("security.capability": ping and the like rely on them, and
// moby and containerd carry them in layers) and POSIX ACLs. Dropped:
// "trusted.*", "security.*" labels other than file capabilities (SELinux,
// SMACK, IMA/EVM: the node's policy labels a container, not its image) and
// any other namespace.
func KeepXattr(name string) bool {
	switch {
	case strings.HasPrefix(name, "user.overlay."):
		return false
	case strings.HasPrefix(name, "user."):
		return true
	}
	switch name {
	case "security.capability", "system.posix_acl_access", "system.posix_acl_default":
		return true
	}
	return false
}

// IsOverlayWhiteout reports a character device 0:0, the overlay format
// of a whiteout.
func IsOverlayWhiteout(hdr *tar.Header) bool {
	return hdr.Typeflag == tar.TypeChar && hdr.Devmajor == 0 && hdr.Devminor == 0
}

// isOverlayOpaque reports a directory entry marked opaque in the overlay
// format.
func isOverlayOpaque(hdr *tar.Header) bool {
	return hdr.PAXRecords["SCHILY.xattr.trusted.overlay.opaque"] == "y"
}

// Package image resolves, downloads, caches and unpacks OCI images for Ferry
// tasks.
//
// A task's image is either a registry reference (host/repo:tag or
// host/repo@sha256:...) or an OCI image layout directory on the node
// ("oci:/path/to/layout[:tag]"). The Store selects the manifest for the node's
// platform, downloads the blobs it does not have yet into a content-addressed
// cache, unpacks each layer it has not unpacked before into a directory of
// its own keyed by the layer's diff ID, assembles the layers into one
// read-only-by-convention rootfs directory per manifest digest, and keeps a
// reference count per image so that images no task uses any more are
// removed after a delay (with the blobs and layers no other image needs).
// Images already on disk when the store opens are removed too unless a
// recovered task acquires them within StoreConfig.RecoverGrace; a rootfs
// still mounted as a task's overlay lower directory is never removed.
//
// On-disk layout under StoreConfig.Dir:
//
//	blobs/sha256/<hex>              manifests, configs and compressed layers
//	layers/sha256/<diff ID hex>/    one unpacked layer, shared by every image
//	                                (and platform) that has it:
//	    fs/                         its files; whiteouts kept as OCI
//	                                ".wh.<name>" and ".wh..wh..opq" markers
//	    layer.json                  what fs/ cannot say: directories that are
//	                                only parents, hard links to lower layers
//	                                (in the order of the layer's entries),
//	                                how many device nodes were not created
//	rootfs/sha256/<manifest hex>/   the rootfs of one image, assembled from
//	                                its layers in order; its files are hard
//	                                links to the layers' (copies where the
//	                                file system refuses), its directories
//	                                its own
//	rootfs/sha256/<manifest hex>.json  its metadata (written last: an image
//	                                   without metadata is incomplete)
//	resolved.json                   reference+platform -> manifest digest
//
// Layers come from whoever submits a job, so unpacking filters them (see
// filter.go): character and block devices are not created (a character
// device 0:0, an overlay-format whiteout, becomes a ".wh." marker, and an
// overlay-format opaque directory a ".wh..wh..opq" one), FIFOs
// are, and only "user.*" (less "user.overlay.*"), "security.capability" and
// POSIX ACL extended attributes are set: "trusted.*" and other
// "security.*" ones are dropped. A layer whose uncompressed archive or
// files exceed StoreConfig.MaxLayerSize (default 8 GiB) fails the pull with
// ErrTooLarge, and one that would leave less than StoreConfig.MinFreeSpace
// (default 512 MiB) free on the store's file system with ErrNoSpace. Tasks
// mount their overlay nodev, which also neutralises device nodes that a
// cache unpacked by an older version may still hold.
//
// Every entry is written under a temporary name in the same directory,
// synced to disk and renamed into place, so a crash or a power loss never
// leaves a partial entry under a final name. Concurrent pulls of one reference share one download; pulls of
// different images that share a layer unpack it once.
//
// Because a rootfs shares its files' inodes with the layer cache, nothing
// may write to it: tasks see it only as the read-only lower directory of an
// overlay of their own.
package image

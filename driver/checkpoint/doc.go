// Package checkpoint defines what a task checkpoint is on disk and makes,
// verifies and unpacks one.
//
// A checkpoint directory holds:
//
//	images/        CRIU's images of the task's processes (runc checkpoint)
//	rootfs.tar     the task's overlay upper directory: its changes to the image
//	config.json    the task's runtime spec at dump time
//	manifest.json  what the checkpoint is, and the size and BLAKE3 sum of every
//	               other file
//
// rootfs.tar is a PAX tar of the upper directory with overlayfs's own
// markers as they are on disk: whiteouts are character devices 0:0 and
// opaque directories carry "trusted.overlay.opaque" = "y". Unpacking it on
// the destination creates those, but no other device node, and sets no
// other "trusted.*" extended attribute, nor "security.*" ones but file
// capabilities (see unpack_filter.go): the upper directory is the task's
// work, and must not plant devices or overlayfs directives on the node.
//
// The manifest is written last, atomically: a directory without one is an
// incomplete checkpoint. Directories are 0700 and files 0600.
//
// A lazy checkpoint (CreateLazy, Options.LazyPages in the manifest) has the
// same files, but its images hold none of the task's anonymous memory: the
// source's CRIU serves that from the stopped, paused task to one
// destination's `criu lazy-pages` (StartLazyPages), working in the task
// directory's lazy-dump/ meanwhile. The destination restores the task
// before its memory has arrived and the daemon fetches the rest; the
// checkpoint is whole only once the daemon reports every page received
// (LazyPages.Result).
//
// On the destination the driver checks the checkpoint (Open), lays out
// a new task directory from it (PrepareTaskDir), mounts the task's overlay
// over the same image, points the runtime spec at the new rootfs
// (RebaseSpec) and restores the container from ImagesDir with the shim in
// restore mode.
package checkpoint

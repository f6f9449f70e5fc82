// Package transfer moves a checkpoint from the node that took it to the node
// that restores it when they share no storage.
//
// A checkpoint is a directory holding manifest.json, a JSON document whose
// "files" list names every other file of the checkpoint with its size,
// SHA-256 and mode, and those files (relative paths such as
// images/pages-1.img, rootfs.tar, config.json). The manifest is written last:
// a directory without one is incomplete.
//
// On each node the companion agent runs a Server over the node's checkpoint
// root (CheckpointDir(root, alloc, task) is where the driver writes the
// checkpoint of one task):
//
//	GET /v1/health                                    "ok", no token needed
//	GET /v1/checkpoints/{alloc}/{task}/manifest.json  the manifest, verbatim
//	GET /v1/checkpoints/{alloc}/{task}/files/{path}   one file the manifest lists
//
// Checkpoint requests must carry the cluster's shared token in the
// X-Ferry-Token header. The destination calls Fetch, which downloads every
// listed file, verifies its size and SHA-256 while streaming it to disk, and
// writes the manifest last.
package transfer

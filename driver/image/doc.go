// Package image resolves, downloads, caches and unpacks OCI images for Ferry
// tasks.
//
// A task's image is either a registry reference (host/repo:tag or
// host/repo@sha256:...) or an OCI image layout directory on the node
// ("oci:/path/to/layout[:tag]"). The Store selects the manifest for the node's
// platform, downloads the blobs it does not have yet into a content-addressed
// cache, flattens the layers into one read-only-by-convention rootfs
// directory per manifest digest, and keeps a reference count per image so that
// images no task uses any more are removed after a delay.
//
// On-disk layout under StoreConfig.Dir:
//
//	blobs/sha256/<hex>              manifests, configs and compressed layers
//	rootfs/sha256/<manifest hex>/   the flattened rootfs of one image
//	rootfs/sha256/<manifest hex>.json  its metadata (written last: an image
//	                                   without metadata is incomplete)
//	resolved.json                   reference+platform -> manifest digest
//
// Every entry is written under a temporary name in the same directory and
// renamed into place, so a crash never leaves a partial entry under a final
// name.
package image

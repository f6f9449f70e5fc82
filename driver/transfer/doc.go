// Package transfer moves a checkpoint from the node that took it to the node
// that restores it, between the drivers of the two nodes, over mutual TLS.
//
// Each driver runs a Server on its transfer listener and records the
// address in the catalogue (catalog.Endpoint). A checkpoint directory (see
// package checkpoint) travels in one of two ways:
//
//   - Pushed, while it is written: when the source knows where the task will
//     be restored (Nomad placed the replacement before stopping the task), it
//     streams the checkpoint to that node's driver while CRIU dumps it (Push).
//     The destination keeps it under its incoming directory,
//     checkpoint.Dir(incoming, alloc, task).
//   - Fetched, after it was written: the destination downloads it from the
//     source's checkpoint directory (Fetch), resuming files a cut push left
//     with Range requests.
//
// Routes, all over TLS with a client certificate signed by the cluster's CA:
//
//	GET /v1/health                                     "ok"
//	GET /v1/checkpoints/{alloc}/{task}/manifest.json   the manifest, verbatim
//	GET /v1/checkpoints/{alloc}/{task}/files/{path}    one listed file; Range supported
//	PUT /v1/checkpoints/{alloc}/{task}                 a push: the body is a frame stream
//
// Every checkpoint request carries "Authorization: Bearer SECRET", a per-move
// credential: the checkpoint's catalogue record holds a Grant with the
// sha256 of the secret, the node it was given to and when it expires (Push
// is made by the source for the destination, Fetch by the destination when
// it claims the record). The server refuses a request whose secret does not
// match the grant of that allocation's task, that comes from another
// address than the granted node's endpoint, or that comes too late.
//
// A push body is a sequence of frames, each a header and a payload:
//
//	kind    1 byte   'F' file data, 'M' the manifest (the last frame)
//	pathlen 2 bytes  big endian; 0 for 'M'
//	path    pathlen bytes, the file's path in the checkpoint ("images/pages-1.img")
//	offset  8 bytes  big endian; the frames of one file follow each other from 0
//	length  4 bytes  big endian; at most maxFrame ('F') or the manifest limit ('M')
//	payload length bytes
//
// The receiver hashes each file as it arrives. On the manifest it first
// checks the manifest's sha256 against the one the source recorded, then
// every file against the manifest, and only then writes manifest.json: a
// received directory holds a manifest only when all of it was verified, and
// is not hashed again before the restore. Fetch keeps the same rule.
package transfer

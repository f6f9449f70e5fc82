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
//
// Limits (see Limits; each has a default) bound what transfers take of a
// node:
//
//   - Stalls, not durations. A transfer fails with ErrStalled when its peer
//     sends nothing (a push's or a fetch's source) or reads nothing (a
//     push's destination, a fetching node) for the idle timeout. Each side
//     counts only the time it waits for the other: a source waiting for
//     CRIU to dump more, or a destination writing to a slow disk, is not
//     stalled. Nothing but the move's context bounds a transfer that keeps
//     moving. A stalled fetch request is retried, resuming where it stopped.
//   - Connections. A server holds at most MaxConnections at once, idle ones
//     included; more wait to be accepted. A connection's TLS handshake and
//     each request's headers (16 KiB at most) must arrive within
//     HeaderTimeout, and one that carries no request is closed after
//     KeepAlive.
//   - Size. A fetch knows the checkpoint's size from the verified manifest
//     before it downloads a byte: it refuses one larger than
//     MaxCheckpointSize (ErrTooLarge), or that does not fit, less what the
//     directory holds of it already, in the free space of the destination's
//     filesystem less MinFreeSpace (ErrNoSpace). A push streams while CRIU
//     dumps, before the size is known (the record announces it, Bytes, when
//     the dump ended; a push that begins later is held to it). Its
//     destination refuses it (413 or 507, ErrTooLarge or ErrNoSpace at the
//     source) when there is no room at all, and then, before writing each
//     frame, when it brings more than the record announces or
//     MaxCheckpointSize, or when the frame does not fit in the free space,
//     looked at again each time, less MinFreeSpace; at the manifest, when it
//     brought more than the record announces. Every file is held to the
//     manifest's size and sum as above.
//   - What is left. A push or a fetch refused for its size, or whose
//     filesystem filled up, removes what it wrote (the task's directory, and
//     the allocation's when left empty): nothing can complete it there. A
//     push cut or stalled keeps what it brought, unverified, for a fetch to
//     resume. The source keeps its checkpoint either way: after a refused
//     push the destination fetches it, and a refused fetch fails the
//     restore.
package transfer

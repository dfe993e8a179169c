/*
 * limits.h - every bound tpckv puts on a resource, in one place.
 *
 * Each limit has a one-line reason. Those a user may need to change have a
 * serve flag (named beside the value); the rest are fixed by the protocol or
 * are safety margins that no workload should reach.
 *
 * Units go last in names: _bytes, _ms, _count.
 */
#ifndef TPCKV_LIMITS_H
#define TPCKV_LIMITS_H

/* memcached protocol: keys are 1..250 bytes (doc/protocol.txt). Fixed. */
#define LIMIT_KEY_BYTES_MAX 250

/* --max-value: largest value a client may store (memcached's -I default). */
#define LIMIT_VALUE_BYTES_DEFAULT (1024 * 1024)
/* Upper bound for --max-value: keeps item sizes in a uint32_t with room. */
#define LIMIT_VALUE_BYTES_CEILING (1024 * 1024 * 1024)

/* A non-retrieval command line (set, incr, ...) is at most about 330 bytes;
 * a line with no newline after this many bytes is garbage and the connection
 * is closed (memcached uses the same 2048). Fixed. */
#define LIMIT_LINE_BYTES_MAX 2048

/* --max-line: a get/gets/gat/gats line may list many keys; it may be this
 * long. Also the most a connection buffers while waiting for a newline. */
#define LIMIT_GET_LINE_BYTES_DEFAULT (1024 * 1024)

/* --max-get-keys: keys in one retrieval command. Each costs an output header
 * (~300 bytes) and a reference to an item until the reply is written. */
#define LIMIT_GET_KEYS_DEFAULT 100000

/* --max-conns: simultaneous client connections (memcached's default). */
#define LIMIT_CONNS_DEFAULT 1024

/* --max-conn-writes: writes one connection may have in the log at once
 * (pipelined sets overlap their durability waits; each holds a struct wreq
 * and its keys' locks until durable). */
#define LIMIT_CONN_WRITES_DEFAULT 64
#define LIMIT_CONN_WRITES_MAX 4096

/* --threads: event loops that serve client TCP connections, besides the
 * main loop (log, replication, timers, UDP). 0 runs everything on the main
 * loop. The default suits the 2-core machines we measure on. */
#define LIMIT_THREADS_DEFAULT 2
#define LIMIT_THREADS_MAX 64

/* --max-memory: bytes of item data the store may hold, in MiB. Above it,
 * writes fail with SERVER_ERROR out of memory; nothing is evicted. */
#define LIMIT_MEMORY_MB_DEFAULT 1024

/* --max-output: bytes of replies queued for one connection before the server
 * stops reading its requests (backpressure; it resumes when the client reads).
 * A connection's queue holds at most this plus one request's reply (values
 * are referenced, not copied: see outq.h). */
#define LIMIT_CONN_OUTPUT_BYTES_DEFAULT (4 * 1024 * 1024)

/* --output-stall-timeout: seconds a connection's queued replies may wait
 * without the client taking a byte of them before it is disconnected (a
 * client that sends and never reads would otherwise hold its connection,
 * its queue and the items it references for good); 0 = never. */
#define LIMIT_OUTPUT_STALL_TIMEOUT_S_DEFAULT 30

/* --idle-timeout: seconds a connection may be silent; 0 = never close. */
#define LIMIT_IDLE_TIMEOUT_S_DEFAULT 0

/* Connection threads look at their connections' timeouts (idle, output
 * stall, authentication) this often. Fixed. */
#define LIMIT_CONN_SWEEP_MS 250

/* File descriptors serve keeps for itself (log, data directory, peers,
 * listeners, event loops) besides one per client connection: at start it
 * raises its RLIMIT_NOFILE soft limit to --max-conns plus this, if allowed. */
#define LIMIT_FDS_RESERVED 64

/* Warnings about events a client can cause at will (refused connections,
 * failed authentications, failed accepts): at most this many a second per
 * kind; the rest are counted and summed up in the next one. Fixed. */
#define LIMIT_LOG_BURST_PER_S 5

/* ---- client authentication (--auth-file) ----------------------------------- */

/* A user name in the auth file: 1..250 bytes, no spaces, ':' or control
 * characters (like a key). */
#define LIMIT_AUTH_USER_BYTES_MAX 250
/* A password: 1..1024 bytes, no control characters. */
#define LIMIT_AUTH_PASSWORD_BYTES_MAX 1024
/* Lines (users) in the auth file; several lines may name one user (a
 * password being changed). Each costs one comparison per attempt. */
#define LIMIT_AUTH_USERS_MAX 1024
/* The auth file's size: users times the longest line, with room. */
#define LIMIT_AUTH_FILE_BYTES_MAX (4 * 1024 * 1024)
/* The data block of memcached's authentication "set": "USER PASSWORD". A
 * longer one cannot match; the connection is closed rather than made to
 * buffer it. memcached allows 16384; no real credential is that long. */
#define LIMIT_AUTH_TOKEN_BYTES_MAX 4096
/* --auth-timeout: seconds a connection may stay unauthenticated before it
 * is closed (it holds one of --max-conns meanwhile); 0 = never. */
#define LIMIT_AUTH_TIMEOUT_S_DEFAULT 10
/* --max-auth-failures: failed attempts on one connection before it is
 * closed (a client with the right password needs one). */
#define LIMIT_AUTH_FAILURES_DEFAULT 3
#define LIMIT_AUTH_FAILURES_MAX 1000

/* -d/--data-dir: where the log, snapshots and lock file live. */
#define LIMIT_DATA_DIR_DEFAULT "./data"

/* --fsync-interval: in --fsync batch, fsyncs are at least this far apart. */
#define LIMIT_FSYNC_INTERVAL_MS_DEFAULT 10

/* --snapshot-bytes: log growth that starts a snapshot (and at least the size
 * of the last snapshot, so rewriting the store costs no more than the log it
 * replaces). Bounds restart time and disk use. */
#define LIMIT_SNAPSHOT_BYTES_DEFAULT (64ull << 20)

/* --wal-segment-bytes: a log segment is closed past this size; whole
 * segments are what a snapshot lets us delete. */
#define LIMIT_WAL_SEGMENT_BYTES_DEFAULT (32ull << 20)

/* --wal-prealloc-bytes: how far ahead of its records the log writer
 * zero-fills a segment under --fsync always/batch (the disk space a log
 * holds beyond its records, at most). 0 appends instead. */
#define LIMIT_WAL_PREALLOC_BYTES_DEFAULT (1ull << 20)

/* Read buffer a connection starts with; it grows to fit one request. */
#define LIMIT_READ_BUF_BYTES_INITIAL (16 * 1024)

/* A connection's read buffer grown past this is shrunk back once idle. */
#define LIMIT_READ_BUF_BYTES_KEEP (64 * 1024)

/* The write-ahead log's three batch buffers (records staged this loop turn,
 * handed to the writer, being written) grow to the largest batch; one grown
 * past this (a burst of large values) is freed once it carries a batch that
 * fills under a quarter of it, so a burst does not pin its memory for good. */
#define LIMIT_WAL_BUF_BYTES_KEEP (1024 * 1024)

/* UDP (memcached framing): a datagram carries 8 header bytes and at most 1392
 * bytes of reply, 1400 in all; a reply spans at most 65535 datagrams (u16). */
#define LIMIT_UDP_HEADER_BYTES 8
#define LIMIT_UDP_PAYLOAD_BYTES 1392
#define LIMIT_UDP_DATAGRAMS_MAX 65535
/* Largest request datagram we read (the IPv6 UDP payload maximum; IPv4
 * allows 65507, so this is enough for both). */
#define LIMIT_UDP_REQUEST_BYTES_MAX 65527

/* Longest log line; longer messages are cut with "...". */
#define LIMIT_LOG_LINE_BYTES 4096

/* Hash table: initial buckets (power of two) and the most it may grow to. */
#define LIMIT_HASH_BUCKETS_INITIAL 1024
#define LIMIT_HASH_BUCKETS_MAX (1u << 30)

/* Relative exptimes above this are absolute unix times (memcached rule). */
#define LIMIT_EXPTIME_RELATIVE_MAX_S (60 * 60 * 24 * 30)

/* ---- replication ---------------------------------------------------------- */

/* --replicas: at most this many replicas (a txid's low byte names its
 * coordinator, and every write waits for all of them). */
#define LIMIT_REPLICAS_MAX 16

/* --prepare-timeout-ms: a coordinator waits this long for every vote before
 * aborting; an in-doubt participant waits this long before asking around. */
#define LIMIT_PREPARE_TIMEOUT_MS_DEFAULT 2000

/* --lock-wait-ms: a request on a key held by a prepared transaction waits
 * this long for the outcome before SERVER_ERROR. */
#define LIMIT_LOCK_WAIT_MS_DEFAULT 5000

/* clie's default --timeout: longer than serve's longest wait before it
 * answers by itself (a lock wait, then a prepare timeout), so a client
 * does not give up just as the server would have said why. */
#define CLIE_TIMEOUT_MS_DEFAULT 10000

/* A write that loses a lock conflict is retried this many times, after a
 * jittered backoff growing from 1 ms to at most 50 ms, before
 * SERVER_ERROR busy. Fixed. */
#define LIMIT_WRITE_RETRIES 8
#define LIMIT_RETRY_BACKOFF_MS_MIN 1
#define LIMIT_RETRY_BACKOFF_MS_MAX 50

/* --max-clock-skew-ms: writes stop while some replica's clock is provably
 * further than this from ours, and a replica whose clock is that far from
 * most others' stops answering reads (DESIGN.md, Time in a cluster). Items
 * expire up to this much early or late on some replica. 0 = no check. */
#define LIMIT_CLOCK_SKEW_MS_DEFAULT 500

/* A cluster replica keeps a txid ceiling in RUN this far ahead of its
 * clock, rewritten (off the loop) once the clock is halfway there: every
 * txid it logs is below the last one made durable, so after a power cut
 * under --fsync none it knows which txids its log may have lost, whatever
 * its clock says then (DESIGN.md, A log that lost records). Fixed. */
#define LIMIT_TXID_CEILING_AHEAD_MS 10000
/* Each replica probes every peer's clock this often. Fixed. */
#define LIMIT_CLOCK_PROBE_MS 1000
/* This host's wall clock moving this much against its monotonic clock
 * between two 100 ms timer ticks is a step: the peers' clocks are measured
 * again before any write. Fixed. */
#define LIMIT_CLOCK_STEP_MS 50

/* Expiry in a cluster is a replicated delete (DESIGN.md): a replica deletes
 * at most this many dead keys, in at most this many bytes of operations, per
 * transaction (one at a time). The bytes stay well inside a peer frame's
 * overhead allowance (LIMIT_PEER_FRAME_OVERHEAD_BYTES), so every peer
 * accepts the PREPARE whatever its --max-value. Fixed. */
#define LIMIT_EXPIRE_TXN_KEYS 1024
#define LIMIT_EXPIRE_TXN_BYTES 3072u

/* Decided transactions each replica remembers, to answer a duplicate or
 * late message and another participant's QUERY. Fixed. */
#define LIMIT_TPC_REMEMBERED 65536

/* A peer frame carries at most one value plus this much (headers, ops). */
#define LIMIT_PEER_FRAME_OVERHEAD_BYTES 4096

/* Bytes queued to one peer before the link is dropped as too slow (the
 * transactions waiting on it then time out and abort). Fixed. */
#define LIMIT_PEER_OUTPUT_BYTES_MAX (256u << 20)

/* Reconnect backoff to a peer: doubles from min to max. Fixed. */
#define LIMIT_PEER_RECONNECT_MS_MIN 50
#define LIMIT_PEER_RECONNECT_MS_MAX 1000

/* A peer must finish the authentication handshake within this. Fixed. */
#define LIMIT_PEER_HANDSHAKE_MS 5000

/* Inbound peer connections still authenticating at once; more are closed
 * (a flood of unauthenticated connections costs at most this many). Fixed. */
#define LIMIT_PEER_HANDSHAKES_MAX 64

/* --secret-file: at least this many bytes of secret. */
#define LIMIT_SECRET_BYTES_MIN 16
#define LIMIT_SECRET_BYTES_MAX 4096

/* Requests of one read parsed ahead of running them, their keys prefetched
 * together; the rest of a longer pipeline is parsed as it runs. A batch
 * size, not a cap on what a read may hold. Fixed. */
#define LIMIT_PARSE_AHEAD_COUNT 16

/* Connections a connection thread holds parsed for the end of its loop
 * turn (64 x ~2.4 KB per thread); reads past them run at once. Fixed. */
#define LIMIT_TURN_READS_COUNT 64

#endif /* TPCKV_LIMITS_H */

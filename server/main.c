/*
 * serve - the tpckv server: flags, logging, signals, and the libuv loop.
 * Everything else lives in lib/ (server.c wires the pieces together).
 */
#include "auth.h"
#include "limits.h"
#include "log.h"
#include "server.h"
#include "util.h"
#include "version.h"
#include "wal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define MOD "serve"

/* Exit codes: 0 clean stop, 1 runtime failure (cannot bind, ...), 2 usage. */
enum { EXIT_USAGE = 2 };

static void usage(FILE *f)
{
    fprintf(
        f,
        "Usage: serve [OPTION]...\n"
        "Run a tpckv server: a key-value store speaking the memcached text protocol\n"
        "over TCP and UDP. It runs in the foreground; SIGINT or SIGTERM stops it.\n"
        "\n"
        "Network:\n"
        "  -s, --host ADDR         address to listen on (IPv4, IPv6 or a name)\n"
        "                          [default: 127.0.0.1]\n"
        "  -p, --port N            one port number for both TCP and UDP; 0 picks a free\n"
        "                          one (logged at startup)  [default: 11211]\n"
        "  -t, --tcp               serve TCP\n"
        "  -u, --udp               serve UDP (memcached's 8-byte frame header)\n"
        "                          With neither -t nor -u: TCP, plus UDP when ADDR is a\n"
        "                          loopback address. UDP on a public address can be\n"
        "                          abused to amplify traffic, so it must be asked for.\n"
        "\n"
        "Client authentication (memcached's ASCII scheme, as memcached -Y):\n"
        "      --auth-file FILE    clients must authenticate before any other command:\n"
        "                          \"set <any> 0 0 <n>\" with the data \"USER "
        "PASSWORD\"\n"
        "                          (STORED, or CLIENT_ERROR authentication failure);\n"
        "                          anything else gets CLIENT_ERROR unauthenticated.\n"
        "                          FILE holds USER:PASSWORD lines ('#' comments) and\n"
        "                          must not be readable by group or others (chmod 600);\n"
        "                          serve refuses to start otherwise. SIGHUP rereads it.\n"
        "                          UDP is not served with it (-u is refused). Without\n"
        "                          it, anyone who reaches the port reads and writes\n"
        "                          everything: keep the default loopback --host\n"
        "      --auth-timeout SEC  close a connection not authenticated by then; 0 =\n"
        "                          never  [default: %d]\n"
        "      --max-auth-failures N  failed attempts before the connection is closed\n"
        "                          [default: %d]\n"
        "\n"
        "Durability:\n"
        "  -d, --data-dir DIR      write-ahead log, snapshots and lock file; created if\n"
        "                          missing; one serve per directory  [default: %s]\n"
        "      --fsync MODE        when a write is acknowledged:\n"
        "                            always  after its log record is on disk "
        "(fdatasync);\n"
        "                                    one fsync covers every write waiting for "
        "it.\n"
        "                                    Survives kill -9 and power loss  [default]\n"
        "                            batch   the same, but fsyncs at most every\n"
        "                                    --fsync-interval ms: fewer fsyncs, more "
        "latency\n"
        "                            none    once the kernel has the record, never "
        "fsynced.\n"
        "                                    Survives kill -9; A POWER CUT OR OS CRASH "
        "LOSES\n"
        "                                    RECENT WRITES\n"
        "      --fsync-interval MS batch mode's minimum time between fsyncs  [default: "
        "%d]\n"
        "      --snapshot-bytes BYTES  snapshot the store when the log has grown this\n"
        "                          much (and by at least the last snapshot's size); "
        "also\n"
        "                          on SIGUSR1 and the 'snapshot' command  [default: "
        "%llu]\n"
        "      --wal-segment-bytes BYTES  size of a log segment file  [default: %llu]\n"
        "      --wal-prealloc-bytes BYTES  with --fsync always/batch, zero-fill the log\n"
        "                          file this far ahead of its records, so an fsync has "
        "no\n"
        "                          file size to write; 0 appends  [default: %llu]\n"
        "\n"
        "Replication (every write is committed on all replicas by two-phase commit):\n"
        "      --id N              this replica's id in --replicas\n"
        "      --replicas LIST     every replica as ID@HOST:PEERPORT, comma-separated, "
        "the\n"
        "                          same list on each (IPv6 hosts in brackets). Replicas\n"
        "                          talk to each other on PEERPORT; clients use -p.\n"
        "                          Without it, serve is a single replica\n"
        "      --secret-file FILE  cluster secret (at least %d bytes; the file should "
        "be\n"
        "                          readable by serve only). Peers prove they hold it\n"
        "                          (HMAC-SHA256 challenge-response); required with more\n"
        "                          than one replica. Make one: openssl rand -hex 32 > "
        "FILE\n"
        "      --epoch N           cluster configuration epoch; replicas with another\n"
        "                          epoch are refused  [default: 1]\n"
        "      --prepare-timeout-ms MS  a write aborts if a replica has not voted by\n"
        "                          then; an undecided replica asks around after it\n"
        "                          [default: %d]\n"
        "      --lock-wait-ms MS   a request on a key held by an undecided transaction\n"
        "                          waits this long, then SERVER_ERROR  [default: %d]\n"
        "      --max-clock-skew-ms MS  the replicas' clocks must agree within this\n"
        "                          (each probes the others every second): beyond it,\n"
        "                          writes are refused, and so are reads on a replica\n"
        "                          whose clock is off from most others'. Expiry is\n"
        "                          judged by each reader's clock, so an item may read\n"
        "                          as expired up to this much early or late on some\n"
        "                          replica. 0 = no check  [default: %d]\n"
        "\n"
        "Logging:\n"
        "  -l, --log LEVEL         error, warn, info or debug; or 0 (error), 1 (info),\n"
        "                          2 (debug). debug logs every request (keys, never\n"
        "                          values)  [default: info]\n"
        "      --log-file FILE     append log lines to FILE instead of stderr\n"
        "\n"
        "Limits (sizes take a k, m or g suffix: 512k, 2m):\n"
        "  -m, --max-memory MB     memory for items, in MiB; when full, writes fail "
        "with\n"
        "                          SERVER_ERROR out of memory and nothing is evicted\n"
        "                          [default: %d]\n"
        "  -c, --max-conns N       simultaneous client connections; more are told\n"
        "                          SERVER_ERROR too many connections  [default: %d]\n"
        "      --max-conn-writes N  writes one connection may have waiting for the log\n"
        "                          at once (pipelined sets); later requests wait\n"
        "                          [default: %d]\n"
        "      --threads N         threads serving TCP connections, each with an event\n"
        "                          loop; the main thread keeps the log, replication,\n"
        "                          timers and UDP. 0: everything on the main thread\n"
        "                          [default: %d, at most %d]\n"
        "      --max-value BYTES   largest value; larger ones get SERVER_ERROR object "
        "too\n"
        "                          large for cache  [default: %d (1 MiB)]\n"
        "      --max-line BYTES    longest get/gets/gat/gats line  [default: %d]\n"
        "      --max-get-keys N    most keys in one get  [default: %d]\n"
        "      --max-output BYTES  replies queued for one connection before the server\n"
        "                          stops reading its requests  [default: %d]\n"
        "      --output-stall-timeout SEC  close a connection whose queued replies the\n"
        "                          client has not read a byte of for SEC seconds (it\n"
        "                          sends and never reads); 0 = never  [default: %d]\n"
        "      --idle-timeout SEC  close connections silent this long; 0 = never\n"
        "                          [default: %d]\n"
        "\n"
        "  -h, --help              show this help and exit\n"
        "  -V, --version           show the version and exit\n"
        "\n"
        "Signals: SIGINT, SIGTERM stop; SIGUSR1 takes a snapshot; SIGHUP rereads\n"
        "--auth-file (a bad file is logged and the old users stay).\n"
        "\n"
        "Exit status: 0 after a clean stop, 1 if the server cannot start (the port is\n"
        "taken, the data directory is in use or damaged: the log says which file and\n"
        "what to do; --auth-file missing, empty, malformed or readable by others), 2\n"
        "for a bad option.\n"
        "\n"
        "Examples:\n"
        "  serve                              TCP and UDP on 127.0.0.1:11211, data in "
        "./data\n"
        "  serve -d /var/lib/tpckv            keep the data elsewhere\n"
        "  serve --fsync none                 faster writes that a power cut can lose\n"
        "  kill -USR1 $(pidof serve)          take a snapshot now\n"
        "  serve --id 1 --replicas 1@127.0.0.1:7001,2@127.0.0.1:7002,3@127.0.0.1:7003 "
        "\\\n"
        "        --secret-file secret -p 11211 -d data1\n"
        "                                     replica 1 of 3 (start 2 and 3 likewise)\n"
        "  serve -p 11300 -l debug            another port, log every request\n"
        "  serve -s 0.0.0.0 -t -m 4096        TCP only on every interface, 4 GiB\n"
        "  serve -u -p 11211 --max-value 64k  UDP only, values up to 64 KiB\n"
        "  serve -s 0.0.0.0 --auth-file users TCP on every interface, clients log in\n"
        "                                     (users: lines like app:s3cret, chmod 600)\n"
        "  clie -p 11300 put greeting hello   then talk to it with clie\n",
        LIMIT_AUTH_TIMEOUT_S_DEFAULT, LIMIT_AUTH_FAILURES_DEFAULT, LIMIT_DATA_DIR_DEFAULT,
        LIMIT_FSYNC_INTERVAL_MS_DEFAULT, (unsigned long long)LIMIT_SNAPSHOT_BYTES_DEFAULT,
        (unsigned long long)LIMIT_WAL_SEGMENT_BYTES_DEFAULT,
        (unsigned long long)LIMIT_WAL_PREALLOC_BYTES_DEFAULT, LIMIT_SECRET_BYTES_MIN,
        LIMIT_PREPARE_TIMEOUT_MS_DEFAULT, LIMIT_LOCK_WAIT_MS_DEFAULT,
        LIMIT_CLOCK_SKEW_MS_DEFAULT, LIMIT_MEMORY_MB_DEFAULT, LIMIT_CONNS_DEFAULT,
        LIMIT_CONN_WRITES_DEFAULT, LIMIT_THREADS_DEFAULT, LIMIT_THREADS_MAX,
        LIMIT_VALUE_BYTES_DEFAULT, LIMIT_GET_LINE_BYTES_DEFAULT, LIMIT_GET_KEYS_DEFAULT,
        LIMIT_CONN_OUTPUT_BYTES_DEFAULT, LIMIT_OUTPUT_STALL_TIMEOUT_S_DEFAULT,
        LIMIT_IDLE_TIMEOUT_S_DEFAULT);
}

static void die_usage(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "serve: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'serve --help' for more information.\n");
    exit(EXIT_USAGE);
}

/* Parses a number flag within [lo, hi]; sizes may carry a k/m/g suffix. */
static uint64_t num_arg(const char *name, const char *s, uint64_t lo, uint64_t hi)
{
    uint64_t v;

    if (util_parse_size(s, &v) < 0 || v < lo || v > hi)
        die_usage("invalid %s '%s' (expected %llu..%llu)", name, s,
                  (unsigned long long)lo, (unsigned long long)hi);
    return v;
}

/* True when host resolves to a loopback address only. */
static bool host_is_loopback(const char *host)
{
    struct addrinfo *res, *ai;
    const char *why;
    bool loop = true;

    if (util_resolve(host, 0, 0, 1, &res, &why) < 0)
        return false;
    for (ai = res; ai; ai = ai->ai_next) {
        /* Copied out: ai_addr is only as aligned as a struct sockaddr. */
        if (ai->ai_family == AF_INET) {
            struct sockaddr_in sin;
            memcpy(&sin, ai->ai_addr, sizeof(sin));
            loop = loop && (ntohl(sin.sin_addr.s_addr) >> 24) == 127;
        } else if (ai->ai_family == AF_INET6) {
            struct sockaddr_in6 sin6;
            memcpy(&sin6, ai->ai_addr, sizeof(sin6));
            loop = loop && IN6_IS_ADDR_LOOPBACK(&sin6.sin6_addr);
        } else {
            loop = false;
        }
    }
    freeaddrinfo(res);
    return loop;
}

/*
 * Every client connection is a file descriptor: raise the soft
 * RLIMIT_NOFILE to fit --max-conns (and what serve needs besides) when the
 * hard limit allows, and say so when it does not, rather than fail accepts
 * later. (memcached does the same.)
 */
static void raise_fd_limit(size_t max_conns)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)max_conns + LIMIT_FDS_RESERVED;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= want)
        return;
    rlim_t old = rl.rlim_cur;
    rl.rlim_cur =
        rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
    if (rl.rlim_cur > old && setrlimit(RLIMIT_NOFILE, &rl) == 0)
        log_info(MOD, "open files limit raised from %llu to %llu for --max-conns %zu",
                 (unsigned long long)old, (unsigned long long)rl.rlim_cur, max_conns);
    else
        rl.rlim_cur = old;
    if (rl.rlim_cur < want)
        log_warn(MOD,
                 "--max-conns %zu needs about %llu open files but the limit is %llu "
                 "(hard %llu): connections past about %llu will fail; raise ulimit -n "
                 "or lower --max-conns",
                 max_conns, (unsigned long long)want, (unsigned long long)rl.rlim_cur,
                 (unsigned long long)rl.rlim_max,
                 rl.rlim_cur > LIMIT_FDS_RESERVED
                     ? (unsigned long long)(rl.rlim_cur - LIMIT_FDS_RESERVED)
                     : 0ull);
}

struct ctx {
    struct server *srv;
    uv_signal_t sigint, sigterm, sigusr1, sighup;
    bool sighup_on;
    const char *auth_file;
    struct auth *auth; /* what the server checks clients against (it borrows it) */
};

static void on_signal(uv_signal_t *h, int signum)
{
    struct ctx *ctx = h->data;

    if (signum == SIGUSR1) {
        int r = server_snapshot(ctx->srv);
        if (r < 0)
            log_warn(MOD, "SIGUSR1: no snapshot started: %s", strerror(-r));
        return;
    }
    if (signum == SIGHUP) {
        /* The loop's callbacks run under the server's lock: no connection
         * is looking at the table while it is swapped. */
        struct auth *a;
        char err[512];
        if (auth_load(ctx->auth_file, &a, err, sizeof(err)) < 0) {
            log_error(MOD,
                      "SIGHUP: --auth-file not reloaded, the previous users stay: %s",
                      err);
            return;
        }
        server_set_auth(ctx->srv, a);
        auth_free(ctx->auth);
        ctx->auth = a;
        log_info(MOD, "SIGHUP: --auth-file %s reloaded: %zu user line(s)", ctx->auth_file,
                 auth_count(a));
        return;
    }
    log_info(MOD, "%s received, shutting down", signum == SIGINT ? "SIGINT" : "SIGTERM");
    server_stop(ctx->srv);
    uv_close((uv_handle_t *)&ctx->sigint, NULL);
    uv_close((uv_handle_t *)&ctx->sigterm, NULL);
    uv_close((uv_handle_t *)&ctx->sigusr1, NULL);
    if (ctx->sighup_on)
        uv_close((uv_handle_t *)&ctx->sighup, NULL);
}

/* A numeric option: where it goes in struct server_config, its range, and
 * the unit its argument is counted in (--max-memory: MiB). */
struct num_opt {
    const char *name;
    size_t off, size; /* the field: offsetof, sizeof */
    uint64_t lo, hi, scale;
};

#define NUM_OPT(name, field, lo, hi)                                                     \
    {                                                                                    \
        name, offsetof(struct server_config, field),                                     \
            sizeof(((struct server_config *)0)->field), lo, hi, 1                        \
    }

static const struct num_opt num_opts[] = {
    NUM_OPT("port", port, 0, 65535),
    {"max-memory (MiB)", offsetof(struct server_config, max_memory_bytes),
     sizeof(uint64_t), 1, 1u << 24, 1u << 20},
    NUM_OPT("max-conns", max_conns, 1, 1000000),
    NUM_OPT("max-value", value_bytes_max, 1, LIMIT_VALUE_BYTES_CEILING),
    NUM_OPT("max-line", get_line_bytes_max, LIMIT_LINE_BYTES_MAX, 64u << 20),
    NUM_OPT("max-get-keys", get_keys_max, 1, 10000000),
    NUM_OPT("max-output", conn_output_bytes_max, 4096, 1ull << 32),
    NUM_OPT("idle-timeout", idle_timeout_s, 0, 86400 * 365),
    NUM_OPT("output-stall-timeout", output_stall_timeout_s, 0, 86400 * 365),
    NUM_OPT("auth-timeout", auth_timeout_s, 0, 86400 * 365),
    NUM_OPT("max-auth-failures", auth_failures_max, 1, LIMIT_AUTH_FAILURES_MAX),
    NUM_OPT("fsync-interval", fsync_interval_ms, 1, 60000),
    NUM_OPT("snapshot-bytes", snapshot_bytes, 4096, 1ull << 50),
    NUM_OPT("wal-segment-bytes", wal_segment_bytes, 4096, 1ull << 40),
    NUM_OPT("wal-prealloc-bytes", wal_prealloc_bytes, 0, 1ull << 40),
    NUM_OPT("id", id, 0, LIMIT_REPLICAS_MAX - 1),
    NUM_OPT("epoch", epoch, 1, UINT32_MAX),
    NUM_OPT("prepare-timeout-ms", prepare_timeout_ms, 10, 600000),
    NUM_OPT("max-conn-writes", conn_writes_max, 1, LIMIT_CONN_WRITES_MAX),
    NUM_OPT("threads", threads, 0, LIMIT_THREADS_MAX),
    NUM_OPT("lock-wait-ms", lock_wait_ms, 1, 3600000),
    NUM_OPT("max-clock-skew-ms", max_clock_skew_ms, 0, 3600000),
};

/* Parses a numeric option's argument into its field of cfg (or exits). */
static void set_num(struct server_config *cfg, const struct num_opt *o, const char *arg)
{
    uint64_t v = num_arg(o->name, arg, o->lo, o->hi) * o->scale;
    char *field = (char *)cfg + o->off;

    switch (o->size) {
    case sizeof(uint32_t): {
        uint32_t v32 = (uint32_t)v;
        memcpy(field, &v32, sizeof(v32));
        break;
    }
    case sizeof(uint64_t):
        memcpy(field, &v, sizeof(v));
        break;
    default:
        abort(); /* a field of another size: add it here */
    }
}

/* The numeric option whose name starts with name. */
static const struct num_opt *num_opt_named(const char *name)
{
    for (size_t i = 0; i < sizeof(num_opts) / sizeof(num_opts[0]); i++)
        if (strncmp(num_opts[i].name, name, strlen(name)) == 0)
            return &num_opts[i];
    abort();
}

/* What the command line says besides the server's configuration. */
struct args {
    const char *log_file, *replicas, *secret_file, *auth_file;
    bool have_id, want_tcp, want_udp;
    enum log_level lvl;
};

/* Parses the command line into cfg and a (or exits: usage, --help...). */
static void parse_args(int argc, char **argv, struct server_config *cfg, struct args *a)
{
    enum {
        OPT_LOG_FILE = 256,
        OPT_FSYNC,
        OPT_REPLICAS,
        OPT_SECRET_FILE,
        OPT_AUTH_FILE,
        OPT_NUM = 512 /* + index in num_opts */
    };
    /* Each numeric option's long name is num_opts[i].name's first word. */
    static const struct option fixed[] = {
        {"host", required_argument, NULL, 's'},
        {"tcp", no_argument, NULL, 't'},
        {"udp", no_argument, NULL, 'u'},
        {"log", required_argument, NULL, 'l'},
        {"log-file", required_argument, NULL, OPT_LOG_FILE},
        {"auth-file", required_argument, NULL, OPT_AUTH_FILE},
        {"data-dir", required_argument, NULL, 'd'},
        {"fsync", required_argument, NULL, OPT_FSYNC},
        {"replicas", required_argument, NULL, OPT_REPLICAS},
        {"secret-file", required_argument, NULL, OPT_SECRET_FILE},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
    };
    enum {
        NFIXED = sizeof(fixed) / sizeof(fixed[0]),
        NNUM = sizeof(num_opts) / sizeof(num_opts[0])
    };
    static char names[NNUM][32];
    struct option opts[NFIXED + NNUM + 1];
    int c;

    memcpy(opts, fixed, sizeof(fixed));
    for (int i = 0; i < NNUM; i++) {
        snprintf(names[i], sizeof(names[i]), "%s", num_opts[i].name);
        names[i][strcspn(names[i], " ")] = '\0';
        opts[NFIXED + i] =
            (struct option){names[i], required_argument, NULL, OPT_NUM + i};
    }
    opts[NFIXED + NNUM] = (struct option){NULL, 0, NULL, 0};
    memset(a, 0, sizeof(*a));
    a->lvl = LOG_LEVEL_INFO;
    while ((c = getopt_long(argc, argv, "s:p:tul:m:c:d:hV", opts, NULL)) != -1) {
        if (c >= OPT_NUM && c < OPT_NUM + NNUM) {
            set_num(cfg, &num_opts[c - OPT_NUM], optarg);
            a->have_id = a->have_id || strcmp(num_opts[c - OPT_NUM].name, "id") == 0;
            continue;
        }
        switch (c) {
        case 's':
            cfg->host = optarg;
            break;
        case 'p':
            set_num(cfg, num_opt_named("port"), optarg);
            break;
        case 'm':
            set_num(cfg, num_opt_named("max-memory"), optarg);
            break;
        case 'c':
            set_num(cfg, num_opt_named("max-conns"), optarg);
            break;
        case 't':
            a->want_tcp = true;
            break;
        case 'u':
            a->want_udp = true;
            break;
        case 'l':
            if (log_parse_level(optarg, &a->lvl) < 0)
                die_usage("invalid log level '%s' (error, warn, info, debug, 0, 1, 2)",
                          optarg);
            break;
        case OPT_LOG_FILE:
            a->log_file = optarg;
            break;
        case OPT_AUTH_FILE:
            if (optarg[0] == '\0')
                die_usage("--auth-file needs a file");
            a->auth_file = optarg;
            break;
        case 'd':
            if (optarg[0] == '\0')
                die_usage("--data-dir needs a directory");
            cfg->data_dir = optarg;
            break;
        case OPT_FSYNC:
            if (wal_fsync_mode_parse(optarg, &cfg->fsync_mode) < 0)
                die_usage("invalid --fsync '%s' (always, batch, none)", optarg);
            break;
        case OPT_REPLICAS:
            a->replicas = optarg;
            break;
        case OPT_SECRET_FILE:
            a->secret_file = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("serve (tpckv) %s\n", TPCKV_VERSION);
            exit(0);
        default:
            fprintf(stderr, "Try 'serve --help' for more information.\n");
            exit(EXIT_USAGE);
        }
    }
}

/* Checks --replicas, --id and --secret-file together, and reads the secret
 * into secret (or exits with usage). */
static void cluster_args(struct server_config *cfg, const struct args *a,
                         unsigned char *secret, size_t cap)
{
    const char *replicas = a->replicas, *secret_file = a->secret_file;
    bool have_id = a->have_id;

    if (replicas) {
        char why[512];
        if (peer_parse_replicas(replicas, cfg->replicas, LIMIT_REPLICAS_MAX,
                                &cfg->nreplicas, why, sizeof(why)) < 0)
            die_usage("invalid --replicas: %s", why);
        if (!have_id)
            die_usage("--replicas needs --id (which of them this serve is)");
        bool listed = false;
        for (size_t i = 0; i < cfg->nreplicas; i++)
            listed = listed || cfg->replicas[i].id == cfg->id;
        if (!listed)
            die_usage("--id %u is not in --replicas", cfg->id);
        if (cfg->nreplicas > 1 && secret_file == NULL)
            die_usage("a cluster of %zu replicas needs --secret-file (make one with: "
                      "openssl rand -hex 32 > FILE)",
                      cfg->nreplicas);
    } else if (have_id || secret_file) {
        die_usage("--id and --secret-file go with --replicas");
    }
    if (secret_file) {
        FILE *f = fopen(secret_file, "rb");
        if (f == NULL)
            die_usage("cannot read --secret-file %s: %s", secret_file, strerror(errno));
        size_t n = fread(secret, 1, cap, f);
        fclose(f);
        while (n > 0 && (secret[n - 1] == '\n' || secret[n - 1] == '\r'))
            n--; /* a trailing newline from echo or an editor is not part of it */
        if (n < LIMIT_SECRET_BYTES_MIN || n > LIMIT_SECRET_BYTES_MAX)
            die_usage("--secret-file %s holds %zu bytes; it needs %d to %d", secret_file,
                      n, LIMIT_SECRET_BYTES_MIN, LIMIT_SECRET_BYTES_MAX);
        cfg->secret = secret;
        cfg->nsecret = n;
    }
}

int main(int argc, char **argv)
{
    struct server_config cfg;
    struct args a;
    unsigned char secret[LIMIT_SECRET_BYTES_MAX + 1];
    struct ctx ctx;
    uv_loop_t loop;
    int r, err;

    server_config_defaults(&cfg);
    parse_args(argc, argv, &cfg, &a);
    const char *log_file = a.log_file;
    const char *secret_file = a.secret_file, *auth_file = a.auth_file;
    bool want_tcp = a.want_tcp, want_udp = a.want_udp;
    enum log_level lvl = a.lvl;

    if (optind < argc)
        die_usage("unexpected argument '%s'", argv[optind]);
    cluster_args(&cfg, &a, secret, sizeof(secret));

    log_set_level(lvl);
    if (log_file && (r = log_open_file(log_file)) < 0) {
        fprintf(stderr, "serve: cannot open log file %s: %s\n", log_file, strerror(-r));
        return 1;
    }
    if (auth_file && want_udp)
        die_usage(
            "-u/--udp cannot go with --auth-file: memcached's authentication has no "
            "UDP form, so UDP would let anyone in (memcached -Y refuses it too)");
    if (want_tcp || want_udp) {
        cfg.tcp = want_tcp;
        cfg.udp = want_udp;
    } else {
        cfg.tcp = true;
        cfg.udp = !auth_file && host_is_loopback(cfg.host);
        if (auth_file)
            log_info(MOD,
                     "UDP is off: --auth-file is given (authentication is TCP only)");
        else if (!cfg.udp)
            log_info(MOD,
                     "UDP is off: %s is not a loopback address (use -u to enable it)",
                     cfg.host);
    }

    if (secret_file && access(secret_file, F_OK) == 0) {
        struct stat sb;
        if (stat(secret_file, &sb) == 0 && (sb.st_mode & 077))
            log_warn(MOD,
                     "--secret-file %s is readable by other users (mode %03o): "
                     "chmod 600 it",
                     secret_file, (unsigned)(sb.st_mode & 0777));
    }
    memset(&ctx, 0, sizeof(ctx));
    if (auth_file) {
        char why[1024];
        if (auth_load(auth_file, &ctx.auth, why, sizeof(why)) < 0) {
            log_error(MOD, "cannot start: --auth-file: %s", why);
            return 1;
        }
        cfg.auth = ctx.auth;
        cfg.auth_file = auth_file;
        ctx.auth_file = auth_file;
        log_info(MOD, "client authentication on: %zu user line(s) from %s",
                 auth_count(ctx.auth), auth_file);
    } else if (!host_is_loopback(cfg.host)) {
        log_warn(
            MOD,
            "no --auth-file: anyone who can reach %s port %d can read and write every "
            "key (see README, Security)",
            cfg.host, cfg.port);
    }
    raise_fd_limit(cfg.max_conns);
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    log_info(MOD, "tpckv serve %s starting, pid %d", TPCKV_VERSION, (int)getpid());
    ctx.srv = server_new(&loop, &cfg, &err);
    if (ctx.srv == NULL) {
        log_error(MOD, "cannot create the server: %s", strerror(-err));
        auth_free(ctx.auth);
        return 1;
    }
    char msg[1024];
    if ((r = server_start(ctx.srv, msg, sizeof(msg))) < 0) {
        log_error(MOD, "cannot start: %s", msg);
        uv_run(&loop, UV_RUN_DEFAULT); /* let closed handles finish */
        server_free(ctx.srv);
        auth_free(ctx.auth);
        uv_loop_close(&loop);
        return 1;
    }
    uv_signal_init(&loop, &ctx.sigint);
    uv_signal_init(&loop, &ctx.sigterm);
    uv_signal_init(&loop, &ctx.sigusr1);
    ctx.sigint.data = ctx.sigterm.data = ctx.sigusr1.data = &ctx;
    uv_signal_start(&ctx.sigint, on_signal, SIGINT);
    uv_signal_start(&ctx.sigterm, on_signal, SIGTERM);
    uv_signal_start(&ctx.sigusr1, on_signal, SIGUSR1);
    if (ctx.auth) {
        /* Only then: SIGHUP's default (stop) is kept for a serve that has
         * nothing to reload. */
        uv_signal_init(&loop, &ctx.sighup);
        ctx.sighup.data = &ctx;
        uv_signal_start(&ctx.sighup, on_signal, SIGHUP);
        ctx.sighup_on = true;
    }

    server_run(ctx.srv);

    server_free(ctx.srv);
    auth_free(ctx.auth);
    r = uv_loop_close(&loop);
    if (r < 0)
        log_warn(MOD, "event loop closed with handles open: %s", uv_strerror(r));
    log_info(MOD, "stopped");
    log_close();
    return 0;
}

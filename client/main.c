/*
 * clie - command-line client for tpckv (any memcached text-protocol server).
 *
 * One invocation = one command = one request and its reply (lib/client.c does
 * the talking). This file is the user interface: options, the command table
 * (which also feeds --help and `clie help CMD`), output formats and the exit
 * status, which scripts rely on:
 *
 *   0 success; 1 condition not met (NOT_FOUND, NOT_STORED, EXISTS, a get
 *   miss); 2 usage error; 3 no answer (connect, timeout, lost connection,
 *   unknown outcome of a UDP write); 4 the server answered with an error;
 *   5 authentication: refused, or asked for and not given (--user).
 *
 * Options are parsed with getopt_long in "return in order" mode ("-" at the
 * start of optstring): options may come before or after the command without
 * relying on GNU permutation (which POSIXLY_CORRECT would switch off), and
 * "--" ends option parsing so arguments may start with '-'.
 *
 * Values are bytes: they are written to stdout with fwrite, exactly (a
 * single get adds a newline only when stdout is a terminal), and
 * read from stdin (VALUE "-") with read(2) up to EOF.
 */
#include "bench.h"
#include "zipf.h"
#include "buf.h"
#include "client.h"
#include "limits.h"
#include "log.h"
#include "util.h"
#include "version.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
    EXIT_OK = 0,
    EXIT_COND = 1,
    EXIT_USAGE = 2,
    EXIT_NOANSWER = 3,
    EXIT_SERVER = 4,
    EXIT_AUTH = 5,
};

/* Long-only options. */
enum {
    OPT_TIMEOUT = 256,
    OPT_RETRIES,
    OPT_USER,
    OPT_PASSWORD_FILE,
    /* bench */
    OPT_DURATION,
    OPT_WARMUP,
    OPT_RATIO,
    OPT_KEY_SIZE,
    OPT_KEY_PREFIX,
    OPT_VALUE_SIZE,
    OPT_KEYS,
    OPT_PRELOAD,
    OPT_SEED,
    OPT_JSON,
    OPT_DIST,
    OPT_ZIPF_S,
};

#define RETRIES_MAX 1000
#define TIMEOUT_MS_MAX (24 * 60 * 60 * 1000)

struct opts {
    const char *host;
    uint16_t port;
    enum client_transport transport;
    int timeout_ms;
    bool timeout_given;
    unsigned retries;
    uint32_t flags;
    int32_t exptime;
    bool quiet;
    int oprtn; /* -1: not given */
    const char *key;
    const char *val;
    const char *user;          /* --user: authenticate every TCP connection */
    const char *password_file; /* --password-file */
    char *password;            /* its first line (read once the options are in) */
    size_t npassword;
};

struct ctx {
    struct opts o;
    struct client c;
    bool open;
    struct client_reply r;
    struct buf line;  /* the request line being built */
    struct buf input; /* a value read from stdin */
};

struct subcmd;
typedef int (*run_fn)(struct ctx *x, const struct subcmd *sc, char **args, int n);

struct subcmd {
    const char *name;
    const char *alias; /* or NULL */
    const char *verb;  /* the memcached command sent */
    int min_args;
    int max_args; /* -1: any number */
    const char *args;
    const char *summary;
    const char *details;
    const char *examples;
    run_fn run;
};

static int run_get(struct ctx *x, const struct subcmd *sc, char **args, int n);
static int run_gets(struct ctx *x, const struct subcmd *sc, char **args, int n);
static int run_store(struct ctx *x, const struct subcmd *sc, char **args, int n);
static int run_delete(struct ctx *x, const struct subcmd *sc, char **args, int n);
static int run_arith(struct ctx *x, const struct subcmd *sc, char **args, int n);
static int run_touch(struct ctx *x, const struct subcmd *sc, char **args, int n);
static int run_keys(struct ctx *x, const struct subcmd *sc, char **args, int n);
static int run_stats(struct ctx *x, const struct subcmd *sc, char **args, int n);
static int run_flush(struct ctx *x, const struct subcmd *sc, char **args, int n);
static int run_version(struct ctx *x, const struct subcmd *sc, char **args, int n);
static int run_snapshot(struct ctx *x, const struct subcmd *sc, char **args, int n);
static int run_bench(struct ctx *x, const struct subcmd *sc, char **args, int n);
static int run_help(struct ctx *x, const struct subcmd *sc, char **args, int n);
static const struct subcmd *find_subcmd(const char *name);

static const struct subcmd subcmds[] = {
    {"get", NULL, "get", 1, -1, "KEY [KEY...]", "print the values of keys",
     "With one KEY, writes its value's bytes to stdout exactly as stored, with no\n"
     "newline added. With several, writes each key found, in the order given, as a\n"
     "line \"KEY BYTES\", then the BYTES bytes of the value, then a newline. Keys not\n"
     "found are named on stderr and make the exit status 1.\n",
     "  clie get greeting\n"
     "  clie get user:1 user:2 user:3\n"
     "  clie -u -s cache1 -p 11211 get photo > photo.jpg\n",
     run_get},
    {"gets", NULL, "gets", 1, 1, "KEY", "print a key's cas unique and value",
     "Writes the key's cas unique and a newline, then the value's bytes exactly.\n"
     "Give the cas unique to `clie cas` to update the key only if nobody changed it\n"
     "in between. Exit status 1 if the key is not found.\n",
     "  clie gets counter\n"
     "  clie gets counter | head -n 1\n",
     run_gets},
    {"put", "set", "set", 2, 2, "KEY VALUE", "store a value (memcached set)",
     "Stores VALUE under KEY, replacing any value it had. Uses --flags and --exptime.\n"
     "VALUE '-' reads the value from standard input up to end of file (binary-safe).\n"
     "Prints STORED.\n",
     "  clie put greeting hello\n"
     "  clie put -e 60 session:42 'token 42'\n"
     "  clie put photo - < photo.jpg\n"
     "  clie put -- offset -15\n",
     run_store},
    {"update", NULL, "replace", 2, 2, "KEY VALUE",
     "store only if the key exists (replace)",
     "Stores VALUE under KEY only if KEY already has a value. Uses --flags and\n"
     "--exptime. Prints STORED, or NOT_STORED (exit status 1) if KEY is absent.\n",
     "  clie update greeting 'hello again'\n"
     "  echo -n new | clie update greeting -\n",
     run_store},
    {"add", NULL, "add", 2, 2, "KEY VALUE", "store a value only if the key is absent",
     "Stores VALUE under KEY only if KEY has no value yet. Uses --flags and\n"
     "--exptime. Prints STORED, or NOT_STORED (exit status 1) if KEY exists.\n"
     "Over UDP, add is not retried: a lost reply leaves the outcome unknown (exit 3).\n",
     "  clie add -e 30 lock:job7 worker-3\n", run_store},
    {"append", NULL, "append", 2, 2, "KEY VALUE", "add bytes after a key's value",
     "Appends VALUE to the value of an existing KEY (its flags and expiry stay).\n"
     "Prints STORED, or NOT_STORED (exit status 1) if KEY is absent.\n",
     "  clie append log:today ' and more'\n", run_store},
    {"prepend", NULL, "prepend", 2, 2, "KEY VALUE", "add bytes before a key's value",
     "Prepends VALUE to the value of an existing KEY (its flags and expiry stay).\n"
     "Prints STORED, or NOT_STORED (exit status 1) if KEY is absent.\n",
     "  clie prepend log:today 'first, '\n", run_store},
    {"cas", NULL, "cas", 3, 3, "KEY VALUE CAS", "store a value if unchanged since gets",
     "Stores VALUE under KEY only if the key's cas unique is still CAS, as printed\n"
     "by `clie gets KEY`. Uses --flags and --exptime. Prints STORED; EXISTS (exit\n"
     "status 1) if the key changed since; NOT_FOUND (exit status 1) if it is gone.\n",
     "  cas=$(clie gets counter | head -n 1)\n"
     "  clie cas counter 8 \"$cas\"\n",
     run_store},
    {"delete", "del", "delete", 1, 1, "KEY", "remove a key",
     "Removes KEY. Prints DELETED, or NOT_FOUND (exit status 1).\n"
     "Over UDP a delete is resent after a timeout; if an earlier attempt did the\n"
     "delete, the later one answers NOT_FOUND (clie then says so on stderr).\n",
     "  clie delete greeting\n"
     "  clie del session:42\n",
     run_delete},
    {"incr", NULL, "incr", 2, 2, "KEY N", "add N to a decimal value, print the result",
     "Adds N (0..18446744073709551615) to the value of KEY, which must be a decimal\n"
     "number; wraps around at 2^64. Prints the new value. Exit status 1 if KEY is\n"
     "absent; 4 if its value is not a number. Not retried over UDP.\n",
     "  clie incr hits 1\n", run_arith},
    {"decr", NULL, "decr", 2, 2, "KEY N",
     "subtract N from a decimal value, print the result",
     "Subtracts N from the value of KEY, which must be a decimal number; stops at 0.\n"
     "Prints the new value. Exit status 1 if KEY is absent; 4 if its value is not\n"
     "a number. Not retried over UDP.\n",
     "  clie decr stock:apples 5\n", run_arith},
    {"touch", NULL, "touch", 2, 2, "KEY EXPTIME", "set a key's expiry without reading it",
     "Sets the expiry of KEY: 0 never, 1..2592000 seconds from now, larger values a\n"
     "unix time, negative: expired at once (write it after '--'). Prints TOUCHED,\n"
     "or NOT_FOUND (exit status 1).\n",
     "  clie touch session:42 600\n"
     "  clie touch -- session:42 -1\n",
     run_touch},
    {"keys", NULL, "keys", 0, 1, "[PREFIX]", "list keys, or those starting with PREFIX",
     "Prints the keys the server holds, one per line; with PREFIX, only the keys\n"
     "that start with it. This is a tpckv extension (\"keys [prefix]\"): memcached\n"
     "answers ERROR (exit status 4).\n",
     "  clie keys\n"
     "  clie keys user:\n",
     run_keys},
    {"stats", NULL, "stats", 0, 3, "[ARG...]", "print server statistics",
     "Prints the server's statistics as \"NAME VALUE\" lines. ARG selects a group\n"
     "(settings, items, slabs, sizes, conns...; what exists depends on the server).\n"
     "Any other single-line answer (e.g. RESET for `stats reset`) is printed as is.\n",
     "  clie stats\n"
     "  clie stats settings\n"
     "  clie -u stats items\n",
     run_stats},
    {"flush", NULL, "flush_all", 0, 1, "[DELAY]",
     "invalidate every item, now or after DELAY s",
     "Invalidates every item (memcached flush_all), now or in DELAY seconds\n"
     "(0..2147483647). Prints OK.\n",
     "  clie flush\n"
     "  clie flush 10\n",
     run_flush},
    {"snapshot", NULL, "snapshot", 0, 0, "", "make the server write a snapshot now",
     "Asks a tpckv server to snapshot its store (tpckv extension) and waits until\n"
     "the snapshot is on disk, then prints OK. Log segments it covers are removed.\n"
     "Without --timeout, waits up to 10 minutes (a large store takes a while).\n",
     "  clie snapshot\n", run_snapshot},
    {"version", NULL, "version", 0, 0, "", "print the server's version",
     "Prints the version string the server reports.\n", "  clie version\n", run_version},
    {"bench", NULL, "set/get", 0, -1, "[OPTION]...",
     "load generator: throughput and latency percentiles",
     "Drives the server with sets and gets from many connections at once and\n"
     "reports throughput and latency. Works against any server speaking the\n"
     "memcached text protocol (tpckv, memcached).\n"
     "\n"
     "Each connection sends a request (-d of them), waits for a reply, then sends\n"
     "the next: a closed loop with -d requests outstanding per connection, their\n"
     "replies matched in order. The connections are shared out over the threads,\n"
     "each running its own event loop. Keys are --key-prefix (default \"bench:\") and\n"
     "a zero-padded number,\n"
     "--key-size bytes in all, chosen among --keys uniformly or (--dist zipf) with\n"
     "key k weighted 1/(k+1)^S, key 0 the hottest; every set stores --value-size\n"
     "bytes.\n"
     "\n"
     "With -u each connection is a UDP socket speaking memcached's UDP framing\n"
     "(8-byte header; memcached needs -U PORT): one request outstanding per\n"
     "socket, a set must fit one datagram (64 KB), replies are reassembled from\n"
     "several datagrams. A reply not in within --timeout (default 1000 ms over UDP)\n"
     "counts as a UDP timeout and the socket goes on with a new request id; a\n"
     "datagram for a request already given up on counts as a late reply.\n"
     "\n"
     "Options (after `bench`; -s, -p and --timeout may also come before it):\n"
     "  -c, --conns=N        connections, 1..10000 (default 50)\n"
     "  -T, --threads=N      threads, 1..256, at most one per connection (default 2)\n"
     "  -d, --depth=N        requests outstanding per connection, 1..1024 (default 1;\n"
     "                       1 with -u)\n"
     "  -u, --udp            UDP instead of TCP (also as `clie -u bench`); -t, --tcp\n"
     "  -n, --requests=N     measure N requests, then stop\n"
     "      --duration=SEC   measure for SEC seconds (default 10); not with -n\n"
     "      --warmup=SEC     first run the load SEC seconds, not counted (default 0)\n"
     "      --ratio=SET:GET  sets to gets, e.g. 1:9 (default 1:0, sets only)\n"
     "      --key-size=B     key length in bytes (default 32)\n"
     "      --key-prefix=P   what every key starts with (default bench:); the report\n"
     "                       says how many keys a run leaves in the store\n"
     "      --value-size=B   value length in bytes, k or m suffix (default 100)\n"
     "      --keys=N         how many distinct keys (default 100000)\n"
     "      --dist=D         key distribution: uniform (default) or zipf\n"
     "      --zipf-s=S       the zipf exponent, above 0 (default 0.99)\n"
     "      --preload        set every key once before warming up and measuring\n"
     "      --seed=N         seed of the key choices (default 1)\n"
     "      --json           print one JSON object (latencies in microseconds)\n"
     "                       instead of the report\n"
     "      --timeout=MS     connect timeout and the longest wait for a reply\n"
     "                       (default 10000 for bench, 1000 with -u); a request still\n"
     "                       without a reply is counted as a timeout: over TCP its\n"
     "                       connection is reopened, over UDP the socket goes on\n"
     "  -s, --host=ADDR, -p, --port=N   the server, as for every command\n"
     "\n"
     "Report: requests completed while measuring and ops/s (every reply counts,\n"
     "errors too); latency p50, p90, p99, p99.9, max and mean of the successful\n"
     "requests (log-linear histogram: within 1% from 1 us to 68 s), from just\n"
     "before a request is written to its whole reply being read; get hits and\n"
     "misses; errors by kind (ERROR, CLIENT_ERROR, SERVER_ERROR, unexpected\n"
     "replies), each with the first one seen; failed connection attempts, dropped\n"
     "connections and reply timeouts; over UDP, UDP timeouts, late replies and send\n"
     "or receive errors. Dropped connections are reopened (after\n"
     "100 ms, doubling to 1 s); a run with no reply at all for twice --timeout\n"
     "plus 1 s stops early and says so. --json also gives the latency histogram\n"
     "(so that runs can be merged). On a terminal, a line per second shows the\n"
     "progress: ops/s in the last second and so far, p99 so far. Ctrl-C ends the\n"
     "run early and still reports.\n"
     "\n"
     "With --user and --password-file (given before `bench`), every connection\n"
     "authenticates first, as clie does (see --help); a connection the server\n"
     "refuses counts as a failed attempt.\n"
     "\n"
     "Exit status: 0 when the run completed, even with errors (they are in the\n"
     "report); 2 for a bad option; 3 if no connection could be opened; 5 if the\n"
     "server refused the credentials on every connection.\n",
     "  clie bench\n"
     "  clie -p 11300 bench -c 1 --duration 5\n"
     "  clie bench -c 100 -T 4 --ratio 1:9 --keys 10000 --preload --warmup 2\n"
     "  clie bench -n 100000 --value-size 4k --json\n"
     "  clie bench -c 4 -d 16 --ratio 1:9 --dist zipf --preload\n"
     "  clie bench -u -c 20 --ratio 0:1 --preload --keys 1000\n"
     "  clie --user app --password-file app.pw bench -c 20\n",
     run_bench},
    {"help", NULL, NULL, 0, 1, "[COMMAND]", "show this help, or a command's details",
     "Without COMMAND, the same as --help. With COMMAND, its usage, what it does\n"
     "and examples. Exit status 2 if COMMAND does not exist.\n",
     "  clie help\n"
     "  clie help cas\n",
     run_help},
};

/* ------------------------------------------------------------------------ */
/* Help                                                                     */

static const char help_head[] =
    "Usage: clie [OPTION]... COMMAND [ARG]...\n"
    "  or:  clie [OPTION]... -o OP -k KEY [-v VALUE]\n"
    "Talk to a tpckv server (or any memcached text-protocol server) over TCP or UDP:\n"
    "one command, one request, one reply; or measure it with `clie bench`, a load\n"
    "generator (see `clie help bench`).\n"
    "\n"
    "Connection:\n"
    "  -s, --host=ADDR      server name or IPv4/IPv6 address (default 127.0.0.1)\n"
    "  -p, --port=N         server port, 1..65535 (default 11211)\n"
    "  -t, --tcp            use TCP (the default)\n"
    "  -u, --udp            use UDP, memcached framing; a request (command line and\n"
    "                       value) must fit one datagram (about 64 KB)\n"
    "      --timeout=MS     time allowed per attempt: to connect, and to send a\n"
    "                       request and receive its whole reply (default 10000:\n"
    "                       longer than serve waits before it answers itself,\n"
    "                       --lock-wait-ms 5000 then --prepare-timeout-ms 2000)\n"
    "      --retries=N      UDP only: times a request is sent again after a timeout,\n"
    "                       0..1000 (default 2); only for commands that are safe to\n"
    "                       repeat: get gets put/set delete touch keys stats flush\n"
    "                       version. add, update, cas, append, prepend, incr and\n"
    "                       decr are sent once: if the reply is lost, the outcome\n"
    "                       is unknown\n"
    "      --user=NAME      authenticate as NAME first, on every TCP connection\n"
    "                       (bench's too): memcached's ASCII authentication, as\n"
    "                       serve --auth-file and memcached -Y ask for. clie sends\n"
    "                       \"version\" first and the credentials only if the\n"
    "                       server answers CLIENT_ERROR unauthenticated. TCP only;\n"
    "                       needs --password-file\n"
    "      --password-file=FILE  the password: the first line of FILE, its\n"
    "                       newline dropped (never on the command line, where ps\n"
    "                       would show it)\n"
    "\n"
    "Storing (put, update, add, append, prepend, cas):\n"
    "  -f, --flags=N        client flags stored with the value, 0..4294967295\n"
    "                       (default 0)\n"
    "  -e, --exptime=N      expiry: 0 never, 1..2592000 seconds from now, larger\n"
    "                       values a unix time, negative: expired at once (default 0)\n"
    "\n"
    "Output and logging:\n"
    "  -q, --quiet          print nothing when a write command succeeds\n"
    "  -l, --log=LEVEL      error, warn, info, debug, or 0 (error), 1 (info),\n"
    "                       2 (debug); debug shows every protocol line sent and\n"
    "                       received (values only as byte counts) (default warn)\n"
    "  -h, --help           show this help and exit\n"
    "  -V, --version        show clie's version and exit\n"
    "\n"
    "Classic script mode (instead of a COMMAND):\n"
    "  -o, --oprtn=OP       0 update (replace), 1 get, 2 delete, 3 put (set)\n"
    "  -k, --key=KEY        the key\n"
    "  -v, --val=VALUE      the value, for -o 0 and -o 3; '-' reads standard input\n"
    "\n"
    "Commands:\n";

static const char help_tail[] =
    "\n"
    "A VALUE of '-' is read from standard input, every byte up to end of file,\n"
    "so binary data is safe. Options may come before or after the command; put\n"
    "'--' before arguments that begin with '-' (other than '-' itself).\n"
    "Keys are 1..250 bytes with no spaces or control characters.\n"
    "\n"
    "Output: `get KEY` writes the value's bytes exactly, no newline added; several\n"
    "keys give \"KEY BYTES\" lines, each followed by the bytes and a newline. Write\n"
    "commands print the server's reply word (STORED, NOT_STORED, EXISTS, NOT_FOUND,\n"
    "DELETED, TOUCHED, OK); with -q a success prints nothing and a refusal is named\n"
    "on stderr. incr/decr print the new value. Diagnostics go to stderr, prefixed\n"
    "\"clie: \".\n"
    "\n"
    "Exit status:\n"
    "  0  success\n"
    "  1  condition not met: NOT_FOUND, NOT_STORED or EXISTS, or a key missing in get\n"
    "  2  usage error: bad option or argument, invalid key, value too large for UDP\n"
    "  3  no answer: cannot connect, connection lost, timeout, or a UDP write that\n"
    "     was not retried and whose outcome is therefore unknown\n"
    "  4  the server answered with an error (ERROR, CLIENT_ERROR ..., SERVER_ERROR\n"
    "     ...; the line is printed on stderr) or with a reply clie cannot parse\n"
    "  5  authentication: the server refused --user/--password-file\n"
    "     (CLIENT_ERROR authentication failure), or it requires authentication\n"
    "     and no --user was given (CLIENT_ERROR unauthenticated)\n"
    "  bench: 0 when the run completed, even with errors (its report counts them),\n"
    "  2 for a bad option, 3 if no connection could be opened, 5 if the server\n"
    "  refused the credentials on every connection\n"
    "\n"
    "Examples:\n"
    "  clie -s 127.0.0.1 -p 11211 -u -o 3 -k foo -v bar    (classic: put)\n"
    "  clie -o 1 -k foo                                      (classic: get)\n"
    "  clie --user app --password-file app.pw get greeting   (serve --auth-file)\n"
    "  head -c 5000 /dev/urandom | clie -o 3 -k blob -v -\n";

static void print_help(FILE *f)
{
    fputs(help_head, f);
    for (size_t i = 0; i < ARRAY_SIZE(subcmds); i++) {
        const struct subcmd *sc = &subcmds[i];
        char use[64];
        snprintf(use, sizeof(use), "%s %s", sc->name, sc->args);
        fprintf(f, "  %-22s %s", use, sc->summary);
        if (sc->alias)
            fprintf(f, "; alias: %s", sc->alias);
        fputc('\n', f);
    }
    fputs(help_tail, f);
    for (size_t i = 0; i < ARRAY_SIZE(subcmds); i++)
        fputs(subcmds[i].examples, f);
}

static void print_subcmd_help(FILE *f, const struct subcmd *sc)
{
    fprintf(f, "Usage: clie [OPTION]... %s%s%s\n", sc->name, sc->args[0] ? " " : "",
            sc->args);
    if (sc->alias)
        fprintf(f, "  or:  clie [OPTION]... %s%s%s\n", sc->alias, sc->args[0] ? " " : "",
                sc->args);
    fprintf(f, "%c%s.\n\n%s\nExamples:\n%s", toupper((unsigned char)sc->summary[0]),
            sc->summary + 1, sc->details, sc->examples);
    fputs("\nSee `clie --help` for the options and exit statuses.\n", f);
}

/* ------------------------------------------------------------------------ */
/* Diagnostics                                                              */

static void diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void diag(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fputs("clie: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static int usage_error(const struct subcmd *sc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints "clie: <reason>" and a hint; returns EXIT_USAGE. */
static int usage_error(const struct subcmd *sc, const char *fmt, ...)
{
    va_list ap;

    fputs("clie: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (sc && sc->verb)
        fprintf(stderr, "Try 'clie help %s' or 'clie --help' for more information.\n",
                sc->name);
    else
        fputs("Try 'clie --help' for more information.\n", stderr);
    return EXIT_USAGE;
}

/* ------------------------------------------------------------------------ */
/* Arguments                                                                */

static int parse_u32_arg(const char *s, uint32_t max, uint32_t *out)
{
    uint32_t v;

    if (util_parse_u32(s, strlen(s), &v) < 0 || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_i32_arg(const char *s, int32_t *out)
{
    int64_t v;

    if (util_parse_i64(s, strlen(s), &v) < 0 || v < INT32_MIN || v > INT32_MAX)
        return -EINVAL;
    *out = (int32_t)v;
    return 0;
}

static int check_key(const struct subcmd *sc, const char *key)
{
    char esc[64];

    if (client_key_valid(key, strlen(key)))
        return 0;
    return usage_error(sc,
                       "invalid key '%s': keys are 1..%d bytes with no spaces or control "
                       "characters",
                       log_escape(esc, sizeof(esc), key, strlen(key)),
                       LIMIT_KEY_BYTES_MAX);
}

/*
 * Reads the first line of --password-file into x->o.password (its newline,
 * and a CR before it, dropped). Returns -1 to go on, or EXIT_USAGE.
 */
static int read_password(struct ctx *x)
{
    const char *path = x->o.password_file;
    char buf[LIMIT_AUTH_PASSWORD_BYTES_MAX + 3];
    size_t n = 0;
    FILE *f = fopen(path, "re");

    if (f == NULL)
        return usage_error(NULL, "cannot read --password-file %s: %s", path,
                           strerror(errno));
    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    char *nl = memchr(buf, '\n', n);
    if (nl)
        n = (size_t)(nl - buf);
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n == 0 || n > LIMIT_AUTH_PASSWORD_BYTES_MAX) {
        memset(buf, 0, sizeof(buf));
        return usage_error(NULL,
                           "--password-file %s: the first line must hold the password, "
                           "1..%d bytes",
                           path, LIMIT_AUTH_PASSWORD_BYTES_MAX);
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)buf[i];
        if (ch < 0x20 || ch == 0x7f) {
            memset(buf, 0, sizeof(buf));
            return usage_error(NULL,
                               "--password-file %s: the password has a control "
                               "character",
                               path);
        }
    }
    x->o.password = malloc(n);
    if (x->o.password == NULL) {
        diag("out of memory");
        return EXIT_NOANSWER;
    }
    memcpy(x->o.password, buf, n);
    x->o.npassword = n;
    memset(buf, 0, sizeof(buf));
    return -1;
}

/* Reads all of stdin into x->input. Returns 0 or an exit status. */
static int read_stdin(struct ctx *x)
{
    x->input.len = 0;
    for (;;) {
        ssize_t n;
        if (buf_reserve(&x->input, 64 * 1024) < 0) {
            diag("out of memory reading standard input");
            return EXIT_USAGE;
        }
        n = read(0, x->input.data + x->input.len, x->input.cap - x->input.len);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            diag("cannot read standard input: %s", strerror(errno));
            return EXIT_USAGE;
        }
        x->input.len += (size_t)n;
    }
}

/* ------------------------------------------------------------------------ */
/* Talking to the server                                                    */

static int exit_for_error(int rc)
{
    switch (rc) {
    case -EMSGSIZE:
    case -EINVAL:
        return EXIT_USAGE;
    case -EPROTO:
        return EXIT_SERVER;
    default:
        return EXIT_NOANSWER;
    }
}

/*
 * Sends x->line (and data when has_data) and reads the reply into x->r,
 * connecting first if needed. Returns 0 or an exit status (diagnosed).
 */
static int exchange(struct ctx *x, const void *data, size_t len, bool has_data)
{
    struct client_request req = {x->line.data, x->line.len, data, len, has_data};
    int rc;

    if (!x->open) {
        struct client_config cfg = {x->o.host, x->o.port, x->o.transport, x->o.timeout_ms,
                                    x->o.retries};
        rc = client_open(&x->c, &cfg);
        if (rc < 0) {
            diag("%s", client_error(&x->c));
            return rc == -EINVAL ? EXIT_USAGE : EXIT_NOANSWER;
        }
        x->open = true;
        if (x->o.user) {
            rc = client_auth(&x->c, x->o.user, x->o.password, x->o.npassword, &x->r);
            if (rc == -EACCES) {
                diag("authentication failed: %s", client_error(&x->c));
                return EXIT_AUTH;
            }
            if (rc < 0) {
                diag("authentication: %s", client_error(&x->c));
                return exit_for_error(rc);
            }
            if (rc == 1)
                log_info("clie",
                         "the server does not ask for authentication: --user unused");
        }
    }
    rc = client_request(&x->c, &req, &x->r);
    if (rc < 0) {
        diag("%s", client_error(&x->c));
        return exit_for_error(rc);
    }
    return 0;
}

static bool is_error_reply(const struct client_reply *r)
{
    return r->type == CLIENT_REPLY_ERROR || r->type == CLIENT_REPLY_CLIENT_ERROR ||
           r->type == CLIENT_REPLY_SERVER_ERROR;
}

/* The server answered with an error line: show it; exit status 4, or 5
 * when it says the connection is not authenticated (before it is, memcached's
 * scheme takes any set for credentials, hence the other two). */
static int server_error(struct ctx *x)
{
    static const char *const auth_replies[] = {
        "CLIENT_ERROR unauthenticated",
        "CLIENT_ERROR authentication failure",
        "CLIENT_ERROR bad authentication token format",
    };
    char esc[512];

    diag("server error: %s", log_escape(esc, sizeof(esc), x->r.line, x->r.line_len));
    for (size_t i = 0; i < ARRAY_SIZE(auth_replies); i++) {
        size_t n = strlen(auth_replies[i]);
        if (x->r.line_len == n && memcmp(x->r.line, auth_replies[i], n) == 0) {
            diag(x->o.user ? "the server does not take the credentials"
                           : "the server requires authentication: give --user NAME and "
                             "--password-file FILE");
            return EXIT_AUTH;
        }
    }
    return EXIT_SERVER;
}

/* A well-formed reply that makes no sense for the command. */
static int unexpected(struct ctx *x, const struct subcmd *sc)
{
    char esc[512];
    const char *what = x->r.line;
    size_t n = x->r.line_len;

    if (x->r.n_items > 0) {
        what = x->r.items[0].line;
        n = x->r.items[0].line_len;
    }
    diag("unexpected reply to %s: %s", sc->verb, log_escape(esc, sizeof(esc), what, n));
    return EXIT_SERVER;
}

static void out(const void *p, size_t n)
{
    fwrite(p, 1, n, stdout);
}

static void out_line(const char *p, size_t n)
{
    out(p, n);
    putchar('\n');
}

/*
 * Reports a write command's reply word: on stdout, unless -q; with -q a
 * refusal is still named on stderr. Returns the exit status.
 */
static int report_word(struct ctx *x, bool success)
{
    if (!x->o.quiet)
        out_line(x->r.line, x->r.line_len);
    else if (!success)
        diag("%.*s", (int)x->r.line_len, x->r.line);
    return success ? EXIT_OK : EXIT_COND;
}

static int line_start(struct ctx *x, const char *verb)
{
    x->line.len = 0;
    if (buf_append_str(&x->line, verb) < 0) {
        diag("out of memory");
        return EXIT_NOANSWER;
    }
    return 0;
}

static int line_add(struct ctx *x, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int line_add(struct ctx *x, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp) || buf_append(&x->line, tmp, (size_t)n) < 0) {
        diag("out of memory");
        return EXIT_NOANSWER;
    }
    return 0;
}

static int line_add_word(struct ctx *x, const char *w)
{
    if (buf_append(&x->line, " ", 1) < 0 || buf_append_str(&x->line, w) < 0) {
        diag("out of memory");
        return EXIT_NOANSWER;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Commands                                                                 */

static int run_get(struct ctx *x, const struct subcmd *sc, char **args, int n)
{
    bool *used;
    int rc, status = EXIT_OK;

    for (int i = 0; i < n; i++)
        if ((rc = check_key(sc, args[i])) != 0)
            return rc;
    if ((rc = line_start(x, sc->verb)) != 0)
        return rc;
    for (int i = 0; i < n; i++)
        if ((rc = line_add_word(x, args[i])) != 0)
            return rc;
    if ((rc = exchange(x, NULL, 0, false)) != 0)
        return rc;
    if (is_error_reply(&x->r))
        return server_error(x);
    if (x->r.type != CLIENT_REPLY_LIST)
        return unexpected(x, sc);
    for (size_t j = 0; j < x->r.n_items; j++)
        if (x->r.items[j].kind != CLIENT_ITEM_VALUE)
            return unexpected(x, sc);

    /* Replies come in request order with misses left out; matching each key
     * to the first unused item of that name also copes with any order. */
    used = calloc(x->r.n_items + 1, sizeof(*used));
    if (used == NULL) {
        diag("out of memory");
        return EXIT_NOANSWER;
    }
    for (int i = 0; i < n; i++) {
        size_t klen = strlen(args[i]);
        const struct client_item *it = NULL;
        for (size_t j = 0; j < x->r.n_items; j++) {
            const struct client_item *c = &x->r.items[j];
            if (!used[j] && c->key_len == klen && memcmp(c->key, args[i], klen) == 0) {
                used[j] = true;
                it = c;
                break;
            }
        }
        if (it == NULL) {
            diag("not found: %s", args[i]);
            status = EXIT_COND;
        } else if (n == 1) {
            /* The exact bytes; on a terminal, a newline after them, so the
             * value does not run into the prompt. */
            out(it->data, it->data_len);
            if (isatty(STDOUT_FILENO) &&
                (it->data_len == 0 || it->data[it->data_len - 1] != '\n'))
                putchar('\n');
        } else {
            printf("%s %zu\n", args[i], it->data_len);
            out_line(it->data, it->data_len);
        }
    }
    for (size_t j = 0; j < x->r.n_items; j++)
        if (!used[j])
            log_warn("clie", "reply has a value for a key not asked for: %.*s",
                     (int)x->r.items[j].key_len, x->r.items[j].key);
    free(used);
    return status;
}

static int run_gets(struct ctx *x, const struct subcmd *sc, char **args, int n)
{
    const struct client_item *it;
    int rc;

    (void)n;
    if ((rc = check_key(sc, args[0])) != 0)
        return rc;
    if ((rc = line_start(x, sc->verb)) != 0 || (rc = line_add_word(x, args[0])) != 0)
        return rc;
    if ((rc = exchange(x, NULL, 0, false)) != 0)
        return rc;
    if (is_error_reply(&x->r))
        return server_error(x);
    if (x->r.type != CLIENT_REPLY_LIST || x->r.n_items > 1)
        return unexpected(x, sc);
    if (x->r.n_items == 0) {
        diag("not found: %s", args[0]);
        return EXIT_COND;
    }
    it = &x->r.items[0];
    if (it->kind != CLIENT_ITEM_VALUE || !it->has_cas || it->key_len != strlen(args[0]) ||
        memcmp(it->key, args[0], it->key_len) != 0)
        return unexpected(x, sc);
    printf("%" PRIu64 "\n", it->cas);
    out(it->data, it->data_len);
    return EXIT_OK;
}

static int run_store(struct ctx *x, const struct subcmd *sc, char **args, int n)
{
    const char *val = args[1];
    size_t vlen = strlen(val);
    uint64_t cas = 0;
    int rc;

    if ((rc = check_key(sc, args[0])) != 0)
        return rc;
    if (n == 3 && util_parse_u64(args[2], strlen(args[2]), &cas) < 0)
        return usage_error(sc,
                           "CAS must be a decimal number (0..18446744073709551615), not "
                           "'%s'",
                           args[2]);
    if (strcmp(val, "-") == 0) {
        if ((rc = read_stdin(x)) != 0)
            return rc;
        val = x->input.data;
        vlen = x->input.len;
    }
    if ((rc = line_start(x, sc->verb)) != 0 || (rc = line_add_word(x, args[0])) != 0 ||
        (rc = line_add(x, " %" PRIu32 " %" PRId32 " %zu", x->o.flags, x->o.exptime,
                       vlen)) != 0)
        return rc;
    if (n == 3 && (rc = line_add(x, " %" PRIu64, cas)) != 0)
        return rc;
    if ((rc = exchange(x, val, vlen, true)) != 0)
        return rc;
    switch (x->r.type) {
    case CLIENT_REPLY_STORED:
        return report_word(x, true);
    case CLIENT_REPLY_NOT_STORED:
    case CLIENT_REPLY_EXISTS:
    case CLIENT_REPLY_NOT_FOUND:
        return report_word(x, false);
    default:
        return is_error_reply(&x->r) ? server_error(x) : unexpected(x, sc);
    }
}

static int run_delete(struct ctx *x, const struct subcmd *sc, char **args, int n)
{
    int rc;

    (void)n;
    if ((rc = check_key(sc, args[0])) != 0)
        return rc;
    if ((rc = line_start(x, sc->verb)) != 0 || (rc = line_add_word(x, args[0])) != 0)
        return rc;
    if ((rc = exchange(x, NULL, 0, false)) != 0)
        return rc;
    switch (x->r.type) {
    case CLIENT_REPLY_DELETED:
        return report_word(x, true);
    case CLIENT_REPLY_NOT_FOUND:
        if (x->r.attempts > 1)
            diag("the delete was sent %u times over UDP: an earlier attempt may have "
                 "deleted the key",
                 x->r.attempts);
        return report_word(x, false);
    default:
        return is_error_reply(&x->r) ? server_error(x) : unexpected(x, sc);
    }
}

static int run_arith(struct ctx *x, const struct subcmd *sc, char **args, int n)
{
    uint64_t delta;
    int rc;

    (void)n;
    if ((rc = check_key(sc, args[0])) != 0)
        return rc;
    if (util_parse_u64(args[1], strlen(args[1]), &delta) < 0)
        return usage_error(
            sc, "N must be a decimal number (0..18446744073709551615), not '%s'",
            args[1]);
    if ((rc = line_start(x, sc->verb)) != 0 || (rc = line_add_word(x, args[0])) != 0 ||
        (rc = line_add(x, " %" PRIu64, delta)) != 0)
        return rc;
    if ((rc = exchange(x, NULL, 0, false)) != 0)
        return rc;
    switch (x->r.type) {
    case CLIENT_REPLY_NUMBER:
        printf("%" PRIu64 "\n", x->r.number);
        return EXIT_OK;
    case CLIENT_REPLY_NOT_FOUND:
        diag("not found: %s", args[0]);
        return EXIT_COND;
    default:
        return is_error_reply(&x->r) ? server_error(x) : unexpected(x, sc);
    }
}

static int run_touch(struct ctx *x, const struct subcmd *sc, char **args, int n)
{
    int32_t exptime;
    int rc;

    (void)n;
    if ((rc = check_key(sc, args[0])) != 0)
        return rc;
    if (parse_i32_arg(args[1], &exptime) < 0)
        return usage_error(sc,
                           "EXPTIME must be a whole number of seconds from %d to %d, not "
                           "'%s'",
                           INT32_MIN, INT32_MAX, args[1]);
    if ((rc = line_start(x, sc->verb)) != 0 || (rc = line_add_word(x, args[0])) != 0 ||
        (rc = line_add(x, " %" PRId32, exptime)) != 0)
        return rc;
    if ((rc = exchange(x, NULL, 0, false)) != 0)
        return rc;
    switch (x->r.type) {
    case CLIENT_REPLY_TOUCHED:
        return report_word(x, true);
    case CLIENT_REPLY_NOT_FOUND:
        return report_word(x, false);
    default:
        return is_error_reply(&x->r) ? server_error(x) : unexpected(x, sc);
    }
}

static int run_keys(struct ctx *x, const struct subcmd *sc, char **args, int n)
{
    int rc;

    if (n == 1 && (rc = check_key(sc, args[0])) != 0)
        return rc;
    if ((rc = line_start(x, sc->verb)) != 0 ||
        (n == 1 && (rc = line_add_word(x, args[0])) != 0))
        return rc;
    if ((rc = exchange(x, NULL, 0, false)) != 0)
        return rc;
    if (is_error_reply(&x->r))
        return server_error(x);
    if (x->r.type != CLIENT_REPLY_LIST)
        return unexpected(x, sc);
    for (size_t j = 0; j < x->r.n_items; j++)
        if (x->r.items[j].kind != CLIENT_ITEM_KEY)
            return unexpected(x, sc);
    for (size_t j = 0; j < x->r.n_items; j++)
        out_line(x->r.items[j].key, x->r.items[j].key_len);
    return EXIT_OK;
}

static int run_stats(struct ctx *x, const struct subcmd *sc, char **args, int n)
{
    char esc[64];
    int rc;

    for (int i = 0; i < n; i++)
        if (!client_key_valid(args[i], strlen(args[i])))
            return usage_error(sc, "invalid stats argument '%s'",
                               log_escape(esc, sizeof(esc), args[i], strlen(args[i])));
    if ((rc = line_start(x, sc->verb)) != 0)
        return rc;
    for (int i = 0; i < n; i++)
        if ((rc = line_add_word(x, args[i])) != 0)
            return rc;
    if ((rc = exchange(x, NULL, 0, false)) != 0)
        return rc;
    if (is_error_reply(&x->r))
        return server_error(x);
    if (x->r.type != CLIENT_REPLY_LIST) {
        /* `stats reset` says RESET, `stats detail on` says OK... */
        out_line(x->r.line, x->r.line_len);
        return EXIT_OK;
    }
    for (size_t j = 0; j < x->r.n_items; j++) {
        const struct client_item *it = &x->r.items[j];
        if (it->kind == CLIENT_ITEM_STAT) {
            out(it->key, it->key_len);
            putchar(' ');
            out_line(it->data, it->data_len);
        } else if (it->kind == CLIENT_ITEM_LINE) {
            out_line(it->line, it->line_len);
        } else {
            return unexpected(x, sc);
        }
    }
    return EXIT_OK;
}

static int run_flush(struct ctx *x, const struct subcmd *sc, char **args, int n)
{
    uint32_t delay = 0;
    int rc;

    if (n == 1 && parse_u32_arg(args[0], INT32_MAX, &delay) < 0)
        return usage_error(
            sc, "DELAY must be a number of seconds (0..2147483647), not '%s'", args[0]);
    if ((rc = line_start(x, sc->verb)) != 0 ||
        (n == 1 && (rc = line_add(x, " %u", delay)) != 0))
        return rc;
    if ((rc = exchange(x, NULL, 0, false)) != 0)
        return rc;
    if (x->r.type == CLIENT_REPLY_OK)
        return report_word(x, true);
    return is_error_reply(&x->r) ? server_error(x) : unexpected(x, sc);
}

static int run_snapshot(struct ctx *x, const struct subcmd *sc, char **args, int n)
{
    int rc;

    (void)args;
    (void)n;
    if (!x->o.timeout_given)
        x->o.timeout_ms = 600000;
    if ((rc = line_start(x, sc->verb)) != 0)
        return rc;
    if ((rc = exchange(x, NULL, 0, false)) != 0)
        return rc;
    if (x->r.type == CLIENT_REPLY_OK)
        return report_word(x, true);
    return is_error_reply(&x->r) ? server_error(x) : unexpected(x, sc);
}

static int run_version(struct ctx *x, const struct subcmd *sc, char **args, int n)
{
    int rc;

    (void)args;
    (void)n;
    if ((rc = line_start(x, sc->verb)) != 0)
        return rc;
    if ((rc = exchange(x, NULL, 0, false)) != 0)
        return rc;
    if (x->r.type == CLIENT_REPLY_VERSION) {
        out_line(x->r.msg, x->r.msg_len);
        return EXIT_OK;
    }
    return is_error_reply(&x->r) ? server_error(x) : unexpected(x, sc);
}

/* ------------------------------------------------------------------------ */
/* bench                                                                    */

static volatile sig_atomic_t bench_interrupt;

static void on_bench_signal(int sig)
{
    (void)sig;
    bench_interrupt = 1;
}

/* A number of seconds: decimal, finite, in [min, 1 year]; min_open excludes min. */
static int parse_seconds_arg(const char *s, double min, bool min_open, double *out)
{
    char *end;
    double v;

    if (s[0] == '\0' || isspace((unsigned char)s[0]))
        return -EINVAL;
    errno = 0;
    v = strtod(s, &end);
    if (*end != '\0' || errno != 0 || !isfinite(v) || v < min || (min_open && v == min) ||
        v > 365.0 * 24 * 3600)
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_ratio_arg(const char *s, unsigned *set, unsigned *get)
{
    const char *colon = strchr(s, ':');
    uint32_t a, b;

    if (colon == NULL || util_parse_u32(s, (size_t)(colon - s), &a) < 0 ||
        util_parse_u32(colon + 1, strlen(colon + 1), &b) < 0 || a > 1000000 ||
        b > 1000000 || (a == 0 && b == 0))
        return -EINVAL;
    *set = a;
    *get = b;
    return 0;
}

/*
 * The options that say where and how to connect, the same for every
 * command and for bench: -s, -p, -t, -u, --timeout. Returns 0 if ch was one
 * (set in o), -1 if it is not, or the exit status of a bad value.
 */
static int connection_opt(struct opts *o, const struct subcmd *sc, int ch,
                          const char *arg)
{
    uint32_t u;

    switch (ch) {
    case 's':
        if (arg[0] == '\0')
            return usage_error(sc, "--host must not be empty");
        o->host = arg;
        return 0;
    case 'p':
        if (parse_u32_arg(arg, 65535, &u) < 0 || u == 0)
            return usage_error(sc, "--port must be 1..65535, not '%s'", arg);
        o->port = (uint16_t)u;
        return 0;
    case 't':
        o->transport = CLIENT_TCP;
        return 0;
    case 'u':
        o->transport = CLIENT_UDP;
        return 0;
    case OPT_TIMEOUT:
        if (parse_u32_arg(arg, TIMEOUT_MS_MAX, &u) < 0 || u == 0)
            return usage_error(sc, "--timeout must be 1..%d milliseconds, not '%s'",
                               TIMEOUT_MS_MAX, arg);
        o->timeout_ms = (int)u;
        o->timeout_given = true;
        return 0;
    default:
        return -1;
    }
}

static const struct option bench_opts[] = {
    {"conns", required_argument, NULL, 'c'},
    {"threads", required_argument, NULL, 'T'},
    {"requests", required_argument, NULL, 'n'},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"warmup", required_argument, NULL, OPT_WARMUP},
    {"ratio", required_argument, NULL, OPT_RATIO},
    {"key-size", required_argument, NULL, OPT_KEY_SIZE},
    {"key-prefix", required_argument, NULL, OPT_KEY_PREFIX},
    {"value-size", required_argument, NULL, OPT_VALUE_SIZE},
    {"keys", required_argument, NULL, OPT_KEYS},
    {"preload", no_argument, NULL, OPT_PRELOAD},
    {"seed", required_argument, NULL, OPT_SEED},
    {"json", no_argument, NULL, OPT_JSON},
    {"depth", required_argument, NULL, 'd'},
    {"udp", no_argument, NULL, 'u'},
    {"tcp", no_argument, NULL, 't'},
    {"dist", required_argument, NULL, OPT_DIST},
    {"zipf-s", required_argument, NULL, OPT_ZIPF_S},
    {"host", required_argument, NULL, 's'},
    {"port", required_argument, NULL, 'p'},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* What bench's command line says besides its configuration. */
struct bench_args {
    bool json, duration_given;
};

/*
 * One of bench's own options into cfg (the connection options are
 * connection_opt's). Returns 0, -1 if ch is not one of them, or the exit
 * status of a bad value.
 */
static int bench_opt(const struct subcmd *sc, int ch, const char *arg,
                     struct bench_config *cfg, struct bench_args *ba)
{
    uint64_t u64;
    uint32_t u;

    switch (ch) {
    case 'c':
        if (parse_u32_arg(arg, BENCH_CONNS_MAX, &u) < 0 || u == 0)
            return usage_error(sc, "--conns must be 1..%d, not '%s'", BENCH_CONNS_MAX,
                               arg);
        cfg->conns = u;
        return 0;
    case 'T':
        if (parse_u32_arg(arg, BENCH_THREADS_MAX, &u) < 0 || u == 0)
            return usage_error(sc, "--threads must be 1..%d, not '%s'", BENCH_THREADS_MAX,
                               arg);
        cfg->threads = u;
        return 0;
    case 'n':
        if (util_parse_u64(arg, strlen(arg), &u64) < 0 || u64 == 0)
            return usage_error(sc, "--requests must be a number from 1, not '%s'", arg);
        cfg->requests = u64;
        return 0;
    case OPT_DURATION:
        if (parse_seconds_arg(arg, 0, true, &cfg->duration_s) < 0)
            return usage_error(sc,
                               "--duration must be a number of seconds above 0 "
                               "(e.g. 10 or 0.5), not '%s'",
                               arg);
        ba->duration_given = true;
        return 0;
    case OPT_WARMUP:
        if (parse_seconds_arg(arg, 0, false, &cfg->warmup_s) < 0)
            return usage_error(
                sc, "--warmup must be a number of seconds from 0, not '%s'", arg);
        return 0;
    case OPT_RATIO:
        if (parse_ratio_arg(arg, &cfg->ratio_set, &cfg->ratio_get) < 0)
            return usage_error(sc,
                               "--ratio must be SET:GET, two numbers 0..1000000 "
                               "not both 0 (e.g. 1:9), not '%s'",
                               arg);
        return 0;
    case OPT_KEY_PREFIX:
        cfg->key_prefix = arg;
        return 0;
    case OPT_KEY_SIZE:
        if (parse_u32_arg(arg, LIMIT_KEY_BYTES_MAX, &u) < 0)
            return usage_error(sc,
                               "--key-size must be a number of bytes up to %d, not '%s'",
                               LIMIT_KEY_BYTES_MAX, arg);
        cfg->key_size = u;
        return 0;
    case OPT_VALUE_SIZE:
        if (util_parse_size(arg, &u64) < 0 || u64 > BENCH_VALUE_MAX)
            return usage_error(sc,
                               "--value-size must be a number of bytes up to %u "
                               "(k and m suffixes allowed), not '%s'",
                               BENCH_VALUE_MAX, arg);
        cfg->value_size = (unsigned)u64;
        return 0;
    case OPT_KEYS:
        if (util_parse_u64(arg, strlen(arg), &u64) < 0 || u64 == 0)
            return usage_error(sc, "--keys must be a number from 1, not '%s'", arg);
        cfg->keys = u64;
        return 0;
    case OPT_PRELOAD:
        cfg->preload = true;
        return 0;
    case OPT_SEED:
        if (util_parse_u64(arg, strlen(arg), &u64) < 0)
            return usage_error(sc, "--seed must be a number, not '%s'", arg);
        cfg->seed = u64;
        return 0;
    case OPT_JSON:
        ba->json = true;
        return 0;
    case 'd':
        if (parse_u32_arg(arg, BENCH_PIPELINE_MAX, &u) < 0 || u == 0)
            return usage_error(sc, "--depth must be 1..%d, not '%s'", BENCH_PIPELINE_MAX,
                               arg);
        cfg->pipeline = u;
        return 0;
    case OPT_DIST:
        if (strcmp(arg, "uniform") == 0)
            cfg->key_dist = BENCH_KEYS_UNIFORM;
        else if (strcmp(arg, "zipf") == 0)
            cfg->key_dist = BENCH_KEYS_ZIPF;
        else
            return usage_error(sc, "--dist must be uniform or zipf, not '%s'", arg);
        return 0;
    case OPT_ZIPF_S: {
        char *end;
        double v;
        errno = 0;
        v = strtod(arg, &end);
        if (arg[0] == '\0' || *end != '\0' || errno != 0 || !(v > 0) || v > ZIPF_S_MAX)
            return usage_error(
                sc, "--zipf-s must be a number above 0 and at most %g, not '%s'",
                ZIPF_S_MAX, arg);
        cfg->zipf_s = v;
        return 0;
    }
    default:
        return -1;
    }
}

/*
 * Parses bench's words (args[-1] is "bench", args[0..n) the words after it,
 * unparsed by parse_args, so they can be given to getopt_long as an argv)
 * into cfg. Returns -1 to go on, or the exit status to stop with.
 */
static int bench_args(struct ctx *x, const struct subcmd *sc, char **args, int n,
                      struct bench_config *cfg, struct bench_args *ba)
{
    struct opts o = x->o; /* the connection options given before "bench" */
    char err[256];
    int ch, r;

    memset(ba, 0, sizeof(*ba));
    bench_config_default(cfg);
    optind = 0; /* glibc: start afresh on a new argv */
    opterr = 0;
    while ((ch = getopt_long(n + 1, args - 1, "+:c:T:n:s:p:d:uth", bench_opts, NULL)) !=
           -1) {
        if ((r = connection_opt(&o, sc, ch, optarg)) >= 0 ||
            (r = bench_opt(sc, ch, optarg, cfg, ba)) >= 0) {
            if (r > 0)
                return r;
            continue;
        }
        if (ch == 'h') {
            print_subcmd_help(stdout, sc);
            return EXIT_OK;
        }
        if (ch == ':')
            return usage_error(sc, "option '%s' needs an argument", args[optind - 2]);
        if (optopt != 0)
            return usage_error(sc, "unknown bench option '-%c'", optopt);
        return usage_error(sc, "unknown bench option '%s'", args[optind - 2]);
    }
    if (optind <= n)
        return usage_error(sc, "unexpected argument '%s'", args[optind - 1]);
    if (cfg->requests > 0 && ba->duration_given)
        return usage_error(sc, "give -n/--requests or --duration, not both");
    cfg->host = o.host;
    cfg->port = o.port;
    cfg->udp = o.transport == CLIENT_UDP;
    if (o.timeout_given)
        cfg->timeout_ms = o.timeout_ms;
    else if (cfg->udp)
        cfg->timeout_ms = BENCH_UDP_TIMEOUT_MS; /* a lost datagram is not worth 10 s */
    if (x->o.user) {
        if (cfg->udp)
            return usage_error(sc, "--user works over TCP only");
        cfg->user = x->o.user;
        cfg->pass = x->o.password;
        cfg->npass = x->o.npassword;
    }
    if (bench_config_check(cfg, err, sizeof(err)) < 0)
        return usage_error(sc, "%s", err);
    return -1;
}

static int run_bench(struct ctx *x, const struct subcmd *sc, char **args, int n)
{
    struct bench_config cfg;
    struct bench_args ba;
    struct bench_result *res;
    struct sigaction sa, old_int, old_term;
    char err[256];
    int rc;

    if ((rc = bench_args(x, sc, args, n, &cfg, &ba)) >= 0)
        return rc;
    res = malloc(sizeof(*res));
    if (res == NULL) {
        diag("out of memory");
        return EXIT_NOANSWER;
    }
    bench_interrupt = 0;
    cfg.interrupt = &bench_interrupt;
    cfg.live = !ba.json && isatty(STDOUT_FILENO) ? stdout : NULL;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_bench_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    rc = bench_run(&cfg, res, err, sizeof(err));
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (rc < 0) {
        diag("%s", err);
        free(res);
        return rc == -EINVAL ? EXIT_USAGE : rc == -EACCES ? EXIT_AUTH : EXIT_NOANSWER;
    }
    if (ba.json)
        bench_print_json(stdout, &cfg, res);
    else
        bench_print_text(stdout, &cfg, res);
    free(res);
    return EXIT_OK;
}

static const struct subcmd *find_subcmd(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(subcmds); i++)
        if (strcmp(subcmds[i].name, name) == 0 ||
            (subcmds[i].alias && strcmp(subcmds[i].alias, name) == 0))
            return &subcmds[i];
    return NULL;
}

static int run_help(struct ctx *x, const struct subcmd *sc, char **args, int n)
{
    const struct subcmd *which;

    (void)x;
    (void)sc;
    if (n == 0) {
        print_help(stdout);
        return EXIT_OK;
    }
    which = find_subcmd(args[0]);
    if (which == NULL)
        return usage_error(NULL, "no command named '%s'", args[0]);
    print_subcmd_help(stdout, which);
    return EXIT_OK;
}

/* ------------------------------------------------------------------------ */
/* main                                                                     */

static const struct option long_opts[] = {
    {"host", required_argument, NULL, 's'},
    {"port", required_argument, NULL, 'p'},
    {"tcp", no_argument, NULL, 't'},
    {"udp", no_argument, NULL, 'u'},
    {"log", required_argument, NULL, 'l'},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"retries", required_argument, NULL, OPT_RETRIES},
    {"user", required_argument, NULL, OPT_USER},
    {"password-file", required_argument, NULL, OPT_PASSWORD_FILE},
    {"flags", required_argument, NULL, 'f'},
    {"exptime", required_argument, NULL, 'e'},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {"oprtn", required_argument, NULL, 'o'},
    {"key", required_argument, NULL, 'k'},
    {"val", required_argument, NULL, 'v'},
    {NULL, 0, NULL, 0},
};

static int after_args(struct ctx *x, char **pos, int npos, bool want_help,
                      bool want_version);

/*
 * Parses argv into x->o and the positional arguments (in order) into pos.
 * Returns -1 to go on, or the exit status to stop with (help, version, error).
 */
static int parse_args(struct ctx *x, int argc, char **argv, char **pos, int *npos)
{
    /* '-': non-options come back in order as 1; ':': missing arguments are
     * reported as ':' so the messages below are ours. */
    static const char shortopts[] = "-:s:p:tul:f:e:qhVo:k:v:";
    bool want_help = false, want_version = false;
    enum log_level lvl = LOG_LEVEL_WARN;
    uint32_t u;
    int ch;

    opterr = 0;
    *npos = 0;
    while ((ch = getopt_long(argc, argv, shortopts, long_opts, NULL)) != -1) {
        int r = connection_opt(&x->o, NULL, ch, optarg);
        if (r > 0)
            return r;
        if (r == 0)
            continue;
        switch (ch) {
        case 1:
            pos[(*npos)++] = optarg;
            /* bench parses the options after it itself (run_bench). */
            if (*npos == 1 && strcmp(optarg, "bench") == 0)
                goto rest;
            break;
        case 'l':
            if (log_parse_level(optarg, &lvl) < 0)
                return usage_error(NULL,
                                   "--log must be error, warn, info, debug, 0, 1 or 2, "
                                   "not '%s'",
                                   optarg);
            break;
        case OPT_RETRIES:
            if (parse_u32_arg(optarg, RETRIES_MAX, &u) < 0)
                return usage_error(NULL, "--retries must be 0..%d, not '%s'", RETRIES_MAX,
                                   optarg);
            x->o.retries = u;
            break;
        case OPT_USER:
            if (!client_auth_user_valid(optarg, strlen(optarg)))
                return usage_error(NULL,
                                   "--user must be 1..%d bytes without spaces or control "
                                   "characters",
                                   LIMIT_AUTH_USER_BYTES_MAX);
            x->o.user = optarg;
            break;
        case OPT_PASSWORD_FILE:
            x->o.password_file = optarg;
            break;
        case 'f':
            if (parse_u32_arg(optarg, UINT32_MAX, &x->o.flags) < 0)
                return usage_error(NULL, "--flags must be 0..4294967295, not '%s'",
                                   optarg);
            break;
        case 'e':
            if (parse_i32_arg(optarg, &x->o.exptime) < 0)
                return usage_error(
                    NULL,
                    "--exptime must be a whole number of seconds from %d to "
                    "%d, not '%s'",
                    INT32_MIN, INT32_MAX, optarg);
            break;
        case 'q':
            x->o.quiet = true;
            break;
        case 'h':
            want_help = true;
            break;
        case 'V':
            want_version = true;
            break;
        case 'o':
            if (strlen(optarg) != 1 || optarg[0] < '0' || optarg[0] > '3')
                return usage_error(NULL,
                                   "--oprtn must be 0 (update), 1 (get), 2 (delete) "
                                   "or 3 (put), not '%s'",
                                   optarg);
            x->o.oprtn = optarg[0] - '0';
            break;
        case 'k':
            x->o.key = optarg;
            break;
        case 'v':
            x->o.val = optarg;
            break;
        case ':':
            return usage_error(NULL, "option '%s' needs an argument", argv[optind - 1]);
        default:
            if (optopt >= '0' && optopt <= '9')
                return usage_error(NULL,
                                   "unknown option '-%c' (put '--' before arguments "
                                   "that begin with '-')",
                                   optopt);
            if (optopt != 0)
                return usage_error(NULL, "unknown option '-%c'", optopt);
            return usage_error(NULL, "unknown option '%s'", argv[optind - 1]);
        }
    }
rest:
    while (optind < argc)
        pos[(*npos)++] = argv[optind++];
    log_set_level(lvl);
    return after_args(x, pos, *npos, want_help, want_version);
}

/* After the options: --help, --version, and the checks that take several
 * options together. Returns -1 to go on, or the exit status to stop with. */
static int after_args(struct ctx *x, char **pos, int npos, bool want_help,
                      bool want_version)
{
    if (want_help) {
        /* `clie put --help` shows put's page. */
        const struct subcmd *sc = npos > 0 ? find_subcmd(pos[0]) : NULL;
        if (sc != NULL && x->o.oprtn < 0)
            print_subcmd_help(stdout, sc);
        else
            print_help(stdout);
        return EXIT_OK;
    }
    if (want_version) {
        puts("clie (tpckv) " TPCKV_VERSION);
        return EXIT_OK;
    }
    if ((x->o.user != NULL) != (x->o.password_file != NULL))
        return usage_error(NULL, "--user and --password-file go together");
    if (x->o.user && x->o.transport == CLIENT_UDP)
        return usage_error(NULL,
                           "--user works over TCP only (memcached's authentication has "
                           "no UDP form; a server that asks for it serves no UDP)");
    if (x->o.password_file)
        return read_password(x);
    return -1;
}

/* Turns -o/-k/-v into a command and its arguments. Returns -1 or an exit status. */
static int classic_mode(struct ctx *x, int npos, const struct subcmd **sc, char **args,
                        int *nargs)
{
    static const char *const names[] = {"update", "get", "delete", "put"};
    static const char *const labels[] = {"update", "get", "delete", "put"};

    if (npos > 0)
        return usage_error(NULL, "-o/--oprtn cannot be combined with a command ('%s')",
                           args[0]);
    if (x->o.key == NULL)
        return usage_error(NULL, "-o %d needs -k KEY", x->o.oprtn);
    *sc = find_subcmd(names[x->o.oprtn]);
    args[0] = (char *)x->o.key;
    *nargs = 1;
    if (x->o.oprtn == 0 || x->o.oprtn == 3) {
        if (x->o.val == NULL)
            return usage_error(NULL, "-o %d (%s) needs -v VALUE ('-v -' reads stdin)",
                               x->o.oprtn, labels[x->o.oprtn]);
        args[1] = (char *)x->o.val;
        *nargs = 2;
    } else if (x->o.val != NULL) {
        diag("-v is ignored with -o %d (%s)", x->o.oprtn, labels[x->o.oprtn]);
    }
    return -1;
}

int main(int argc, char **argv)
{
    struct ctx x;
    const struct subcmd *sc = NULL;
    char **pos, **args = NULL;
    int npos = 0, nargs = 0, rc;

    memset(&x, 0, sizeof(x));
    x.o.host = "127.0.0.1";
    x.o.port = 11211;
    x.o.transport = CLIENT_TCP;
    x.o.timeout_ms = CLIE_TIMEOUT_MS_DEFAULT;
    x.o.retries = 2;
    x.o.oprtn = -1;
    client_reply_init(&x.r);
    log_set_level(LOG_LEVEL_WARN);

    pos = calloc((size_t)argc + 2, sizeof(*pos));
    if (pos == NULL) {
        diag("out of memory");
        return EXIT_NOANSWER;
    }
    rc = parse_args(&x, argc, argv, pos, &npos);
    if (rc >= 0)
        goto done;

    if (x.o.oprtn >= 0) {
        args = pos;
        rc = classic_mode(&x, npos, &sc, args, &nargs);
        if (rc >= 0)
            goto done;
    } else {
        if (x.o.key || x.o.val) {
            rc = usage_error(NULL,
                             "-k and -v go with -o/--oprtn; commands take the key and "
                             "value as arguments");
            goto done;
        }
        if (npos == 0) {
            rc = usage_error(NULL, "missing command");
            goto done;
        }
        sc = find_subcmd(pos[0]);
        if (sc == NULL) {
            rc = usage_error(NULL, "unknown command '%s'", pos[0]);
            goto done;
        }
        args = pos + 1;
        nargs = npos - 1;
        if (nargs < sc->min_args || (sc->max_args >= 0 && nargs > sc->max_args)) {
            rc = usage_error(sc, "wrong number of arguments for %s: expected %s, got %d",
                             sc->name, sc->args[0] ? sc->args : "none", nargs);
            goto done;
        }
    }
    rc = sc->run(&x, sc, args, nargs);

done:
    if (fflush(stdout) != 0 || ferror(stdout)) {
        diag("cannot write the output: %s", strerror(errno));
        if (rc == EXIT_OK)
            rc = EXIT_NOANSWER;
    }
    if (x.open)
        client_close(&x.c);
    client_reply_free(&x.r);
    buf_free(&x.line);
    buf_free(&x.input);
    if (x.o.password) {
        memset(x.o.password, 0, x.o.npassword);
        free(x.o.password);
    }
    free(pos);
    return rc;
}

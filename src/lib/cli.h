/* Command-line helpers shared by every subcommand. */
#ifndef TP_CLI_H
#define TP_CLI_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* The value of option `name` at argv[*i], given as "--name VALUE" (advancing
 * *i) or "--name=VALUE"; NULL when argv[*i] is not that option. A missing
 * value prints "turnpike CMD: --name needs a value" and exits with 2. */
const char *tp_cli_value(int argc, char **argv, int *i, const char *name, const char *cmd);
/* Split "HOST:PORT" or "[IPV6]:PORT" (port 0..65535; the brackets are not
 * part of host). 0 or -1. */
int tp_cli_hostport(const char *s, char *host, size_t hl, uint16_t *port);
/* The inverse: "HOST:PORT", "[HOST]:PORT" when HOST is an IPv6 address. */
void tp_cli_hostport_fmt(char *out, size_t n, const char *host, unsigned port);
/* A numeric IPv4 or IPv6 address (or "localhost", 127.0.0.1) and a port as
 * a socket address for bind(2). 0 or -1. */
int tp_cli_sockaddr(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len);
/* Raise the soft limit on open files toward `want` (at most the hard
 * limit): a login shell's 1024 would cap a server at ~1000 connections.
 * Returns the soft limit now in force. */
long tp_cli_raise_nofile(long want);
/* Make `dir` (0700) if missing and take an exclusive flock(2) on
 * DIR/NAME for the life of the process, writing our pid into it: one
 * server per data directory (two would each keep their own in-flight
 * idempotency keys and object locks over one store). The kernel drops the
 * lock when the process dies, kill -9 included. Returns the descriptor
 * (kept open, close-on-exec), -2 when another process holds the lock
 * (*holder its pid, 0 if unknown) or -1 on any other error (errno).
 * on_dir: the lock is the directory's (and the file's, for binaries that
 * locked the file alone), not only the file's, which a deletion defeats. */
int tp_cli_lock_dir(const char *dir, const char *name, bool on_dir, long *holder);
/* Parse a configuration file with libinih, read once into memory (at most
 * TP_CLI_CONFIG_MAX bytes): a regular file, or a pipe (`--config <(...)`,
 * /dev/stdin), whose bytes could not be read a second time to hash them.
 * A directory is refused (ini_parse read it as an empty file, and
 * `--config /etc/turnpike` ran on built-in defaults, the in-process sandbox
 * approving every payment), and so is anything longer (/dev/zero). -1 when
 * it cannot be read so, else ini_parse_string's result. handler is an
 * ini_handler. The SHA-256 of the bytes parsed is then
 * tp_cli_config_sha256 (hex; "" before). */
#define TP_CLI_CONFIG_MAX (1 << 20)
int tp_cli_ini_parse(const char *path, int (*handler)(void *, const char *, const char *, const char *), void *user);
extern char tp_cli_config_sha256[65];
/* The data directory a command uses when not given --data:
 * TURNPIKE_SERVER_DATA when set and not empty (as serve takes it), else
 * conf ([server] data of a --config file, when the command read one; NULL
 * if none), else "./var". */
const char *tp_cli_default_data(const char *conf);
#endif

/* Command-line helpers shared by every subcommand. */
#ifndef TP_CLI_H
#define TP_CLI_H
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
#endif

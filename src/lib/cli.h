/* Command-line helpers shared by every subcommand. */
#ifndef TP_CLI_H
#define TP_CLI_H
#include <stddef.h>
#include <stdint.h>

/* The value of option `name` at argv[*i], given as "--name VALUE" (advancing
 * *i) or "--name=VALUE"; NULL when argv[*i] is not that option. A missing
 * value prints "turnpike CMD: --name needs a value" and exits with 2. */
const char *tp_cli_value(int argc, char **argv, int *i, const char *name, const char *cmd);
/* Split "HOST:PORT" (the last colon separates; port 0..65535). 0 or -1. */
int tp_cli_hostport(const char *s, char *host, size_t hl, uint16_t *port);
#endif

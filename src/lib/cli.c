/* Command-line helpers shared by every subcommand. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *tp_cli_value(int argc, char **argv, int *i, const char *name, const char *cmd)
{
  size_t n = strlen(name);
  if (strncmp(argv[*i], name, n) == 0 && argv[*i][n] == '=')
    return argv[*i] + n + 1;
  if (strcmp(argv[*i], name) != 0)
    return NULL;
  if (*i + 1 >= argc) {
    fprintf(stderr, "turnpike %s: %s needs a value\n", cmd, name);
    exit(2);
  }
  return argv[++*i];
}

int tp_cli_hostport(const char *s, char *host, size_t hl, uint16_t *port)
{
  const char *colon = strrchr(s, ':');
  if (!colon || colon == s || (size_t)(colon - s) >= hl || !colon[1])
    return -1;
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (*end || p < 0 || p > 65535)
    return -1;
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = '\0';
  *port = (uint16_t)p;
  return 0;
}

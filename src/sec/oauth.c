/* Placeholder: being written. */
#include "main/commands.h"

#include <stdio.h>

int tp_cmd_oauth_client(int argc, char **argv)
{
  (void)argc;
  (void)argv;
  fprintf(stderr, "turnpike: not implemented yet\n");
  return 2;
}

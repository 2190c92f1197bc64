/* Placeholder: being written. */
#include "sec/audit.h"
#include "main/commands.h"

#include <stdio.h>

void tp_audit_append(struct tp_cs *cs, const char *merchant, const char *actor, const char *action,
                     const char *object_id, const json_t *details)
{
  (void)cs; (void)merchant; (void)actor; (void)action; (void)object_id; (void)details;
}

int tp_cmd_audit(int argc, char **argv)
{
  (void)argc;
  (void)argv;
  fprintf(stderr, "turnpike: not implemented yet\n");
  return 2;
}

/* Placeholder: the processor registry is being written. For now the sandbox
 * is the only processor. */
#include "connectors/connector.h"
#include "core/payflow.h"
#include "main/features.h"

static struct tp_connector sandbox;

int tp_procs_start(void)
{
  if (tp_sandbox_start(&sandbox, "sandbox") != 0)
    return -1;
  tp_default_connector = &sandbox;
  return 0;
}

void tp_procs_stop(void)
{
  sandbox.ops->stop(sandbox.cls);
}

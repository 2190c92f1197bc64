/* Liveness and readiness probes, no authentication. */
#include "api/handlers.h"
#include "api/http.h"
#include "sec/kek.h"
#include "core/procs.h"
#include "jpack.h"
#include "main/features.h"

#include <stdio.h>
#include <string.h>

/* GET /healthz: the process answers HTTP. */
void tp_h_healthz(struct tp_req *r)
{
  tp_reply_json(r, 200, tp_pack("{s:s}", "status", "ok"));
}

/* GET /readyz: not shutting down, the store answers a read (a balance
 * query on a reader connection; a merchant with no ledger gives []) and
 * takes writes, at least one processor is usable, and the vault's keys
 * answer (tp_kek_ready). */
void tp_h_readyz(struct tp_req *r)
{
  if (tp_app.shutting_down) {
    tp_reply_json(r, 503, tp_pack("{s:s, s:s}", "status", "unavailable", "reason", "shutting_down"));
    return;
  }
  json_t *b = tp_app.store.ops && tp_app.store.ops->balance
                  ? tp_app.store.ops->balance(tp_app.store.cls, "acct_readyz_probe")
                  : NULL;
  if (!json_is_array(b)) {
    json_decref(b);
    tp_reply_json(r, 503, tp_pack("{s:s, s:s}", "status", "unavailable", "reason", "store_unavailable"));
    return;
  }
  json_decref(b);
  if (tp_store_corrupt()) { /* reads of its damaged pages fail, and writes touching them */
    tp_reply_json(r, 503, tp_pack("{s:s, s:s}", "status", "unavailable", "reason", "store_corrupt"));
    return;
  }
  /* Writable: the writer takes work and a heartbeat row committed recently
   * (the housekeeping job writes one every second). */
  if (!tp_writer_ok() || tp_store_heartbeat_age_ms() > 5000) {
    tp_reply_json(r, 503, tp_pack("{s:s, s:s}", "status", "unavailable", "reason", "store_not_writable"));
    return;
  }
  if (tp_store_space_low()) {
    tp_reply_json(r, 503, tp_pack("{s:s, s:s}", "status", "unavailable", "reason", "store_space_low"));
    return;
  }
  /* Payments need somewhere to go: at least one processor whose breaker is
   * not open and whose health check has not failed. */
  if (!tp_procs_any_usable()) {
    tp_reply_json(r, 503, tp_pack("{s:s, s:s}", "status", "unavailable", "reason", "no_processor_available"));
    return;
  }
  /* Card payments need the vault's keys: an HSM gone (a token pulled, a
   * network HSM down) fails each of them until it is back. */
  if (!tp_kek_ready()) {
    tp_reply_json(r, 503, tp_pack("{s:s, s:s}", "status", "unavailable", "reason", "vault_keys_unavailable"));
    return;
  }
  tp_reply_json(r, 200, tp_pack("{s:s}", "status", "ready"));
}

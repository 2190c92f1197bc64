/* GET /v1/turnpike/processors: every configured processor with its health,
 * breaker state, rolling success rate and latency percentiles (never its
 * credentials). */
#include "api/handlers.h"
#include "api/http.h"
#include "api/objects.h"
#include "core/procs.h"
#include "jpack.h"

/* GET /v1/turnpike/processors */
static const struct tp_pspec spec_none[] = {{NULL, 0, NULL, NULL}};

void tp_h_processors_list(struct tp_req *r)
{
  if (!tp_check_params(r, spec_none)) /* as every route: an unknown parameter is a 400 */
    return;
  /* The figures are the whole process's, every tenant's payments: a
   * merchant's key from elsewhere watched another's volume and declines as
   * they happened (review, session 39). The operator's host only, as for
   * the log level and /metrics. */
  if (!tp_req_client_is_loopback(r)) {
    tp_reply_error(r, TP_ERR_IP_NOT_ALLOWED, NULL,
                   "The processors' figures are the whole gateway's: they are read from the gateway's own host "
                   "only (or /metrics with its token).");
    return;
  }
  json_t *data = json_array();
  size_t n = tp_procs_count();
  for (size_t i = 0; i < n; i++)
    json_array_append_new(data, tp_proc_json(tp_proc_at(i)));
  tp_reply_json(r, 200, tp_pack("{s:s, s:o, s:b, s:s}", "object", "list", "data", data, "has_more", 0, "url",
                                "/v1/turnpike/processors"));
}

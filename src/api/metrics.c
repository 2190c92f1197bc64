/* Observability endpoints: GET /metrics (Prometheus text format 0.0.4) and
 * POST /v1/turnpike/log_level.
 *
 * Scrapers have no Stripe key, so /metrics needs none: by default it answers
 * loopback clients only; with [metrics] token = T it answers anyone sending
 * Authorization: Bearer T (and nobody else); [metrics] public = true opens it
 * to every client. */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/http.h"
#include "config.h"
#include "jpack.h"
#include "log.h"
#include "metrics.h"
#include "proxies.h"
#include "sec/audit.h"
#include "sec/auth.h"
#include "sec/ratelimit.h"
#include "store/sqlite/pcache.h"
#include "util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whether the client is on this host. Behind a reverse proxy on this host
 * every connection comes from loopback: with [server] trusted_proxies the
 * client is the one the proxy forwards (and one it does not disclose is not
 * a loopback client). */

static bool peer_is_loopback(struct tp_req *r)
{
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (!ci || !ci->client_addr)
    return false;
  const struct sockaddr *sa = ci->client_addr;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
    return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
  }
  return false;
}

bool tp_req_client_is_loopback(struct tp_req *r)
{
  if (!peer_is_loopback(r))
    return false;
  if (!tp_proxies_configured())
    return true;
  const char *a = tp_req_client_addr(r);
  if (!r->client_addr_known)
    return false;
  struct in_addr v4;
  struct in6_addr v6;
  if (inet_pton(AF_INET, a, &v4) == 1)
    return (ntohl(v4.s_addr) >> 24) == 127;
  return inet_pton(AF_INET6, a, &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

static void describe(void)
{
  tp_metric_help("turnpike_http_requests_total", "HTTP requests answered, by route pattern, method and status class.");
  tp_metric_help("turnpike_http_request_duration_seconds", "Time from the first byte of a request to its reply.");
  tp_metric_help("turnpike_http_inflight_requests", "Requests suspended while waiting for a commit or a processor.");
  tp_metric_help("turnpike_http_uri_too_long_total", "Requests refused 414 as their request line was parsed (longer than the connection memory allows an answer for).");
  tp_metric_help("turnpike_writer_queue_depth", "Change sets queued for the group-commit writer.");
  tp_metric_help("turnpike_writer_batches", "Group-commit transactions since start.");
  tp_metric_help("turnpike_writer_max_batch_size", "Largest group-commit batch since start.");
  tp_metric_help("turnpike_store_batch_size", "Change sets per group-commit transaction.");
  tp_metric_help("turnpike_store_wal_frames_total", "Database pages appended to the WAL by commits (write amplification).");
  tp_metric_help("turnpike_store_commit_duration_seconds", "Time to apply and commit one group-commit batch.");
  tp_metric_help("turnpike_store_pcache_truncations",
                 "Page-cache truncations since start (store/sqlite/pcache.h): passed to SQLite's cache, spared as "
                 "needless, or spared where SQLite would have scanned its whole cache (scan_saved).");
  static const char *const more[][2] = {
    {"turnpike_iso_link_up", "1 when the ISO 8583 link is connected and signed on."},
    {"turnpike_iso_errors_total", "ISO 8583 calls that ended without a usable answer."},
    {"turnpike_iso_reversals_total", "ISO 8583 reversals started by the link (timeouts, unusable answers)."},
    {"turnpike_iso_reversals_failed_total", "ISO 8583 reversals the link gave up repeating (left to recovery)."},
    {"turnpike_oauth_tokens_issued_total", "OAuth access tokens issued."},
    {"turnpike_search_refused_total", "Search requests refused for the search concurrency limits."},
    {"turnpike_store_sync_duration_seconds", "Time to sync one group commit to disk."},
    {"turnpike_stream_ping_timeouts_total", "Stream clients closed for not answering a ping."},
    {"turnpike_stream_replayed_events_total", "Events replayed to resuming stream clients."},
    {"turnpike_alert_events_dropped_total", "Alert events dropped as their queue was full."},
    {"turnpike_recovery_orphan_approvals_total",
     "Approvals recovery found at a processor for an attempt the store holds no payment for."},
    {"turnpike_attempts_unresolved_total", "Processor calls whose outcome was left unknown, for recovery."},
  };
  for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
    tp_metric_help(more[i][0], more[i][1]);
  /* Counters an alert watches from their first event: present at 0 from the
   * start (Prometheus's increase() misses the first sample of a new series). */
  static const char *const zero[] = {"turnpike_recovery_orphan_approvals_total", "turnpike_attempts_unresolved_total",
                                     "turnpike_stream_ping_timeouts_total", "turnpike_alert_events_dropped_total",
                                     "turnpike_oauth_tokens_issued_total", "turnpike_search_refused_total",
                                     "turnpike_stream_replayed_events_total"};
  for (size_t i = 0; i < sizeof zero / sizeof zero[0]; i++)
    tp_metric_inc(zero[i], NULL, 0);
}

/* Figures other modules keep themselves, copied into gauges at scrape time. */
static void refresh_gauges(void)
{
  struct tp_writer_stats ws;
  tp_writer_stats(&ws);
  tp_metric_set("turnpike_writer_queue_depth", NULL, (int64_t)ws.queued);
  tp_metric_set("turnpike_writer_batches", NULL, (int64_t)ws.batches);
  tp_metric_set("turnpike_writer_max_batch_size", NULL, (int64_t)ws.max_batch);
  tp_metric_set("turnpike_http_inflight_requests", NULL, (int64_t)tp_http_inflight());
  struct tp_pcache_counts pc;
  tp_pcache_counts(&pc);
  tp_metric_set("turnpike_store_pcache_truncations", "outcome=\"passed\"", (int64_t)pc.passed);
  tp_metric_set("turnpike_store_pcache_truncations", "outcome=\"spared\"", (int64_t)pc.spared);
  tp_metric_set("turnpike_store_pcache_truncations", "outcome=\"scan_saved\"", (int64_t)pc.scans_saved);
}

/* GET /metrics */
void tp_h_metrics(struct tp_req *r)
{
  const char *token = tp_config_get("metrics", "token");
  if (token && *token) {
    const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    size_t tl = strlen(token);
    /* Guesses are limited as [ratelimit] auth_failures limits bad keys
     * (the token is the operator's, maybe short), in a bucket of their own:
     * a scraper left on a rotated token locked the address's API clients
     * out, and bad API keys blinded the scraper. A 401 names its scheme
     * (RFC 9110 15.5.2). */
    char sub[INET6_ADDRSTRLEN + 8], who[64];
    tp_ratelimit_addr_bucket(tp_req_client_addr(r), sub, sizeof sub); /* an IPv6 /64 is one client */
    snprintf(who, sizeof who, "metrics %s", sub);
    if (tp_req_login_blocked_as(r, who))
      return;
    if (!h || strncasecmp(h, "Bearer ", 7) != 0 || strlen(h + 7) != tl || !tp_ct_equal(h + 7, token, tl)) {
      if (h)
        tp_ratelimit_auth_failed(who, tp_mono_ms());
      snprintf(r->www_authenticate, sizeof r->www_authenticate, "Bearer realm=\"turnpike-metrics\"");
      tp_reply_error(r, TP_ERR_AUTH_INVALID_KEY, NULL, "The metrics endpoint needs its bearer token.");
      return;
    }
  } else if (!tp_config_bool("metrics", "public", false) && !tp_req_client_is_loopback(r)) {
    tp_reply_error(r, TP_ERR_IP_NOT_ALLOWED, NULL,
                   "Metrics are served to loopback clients only unless [metrics] token or public is set.");
    return;
  }
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, describe);
  refresh_gauges();
  char *text = tp_metrics_render();
  if (!text) {
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return;
  }
  tp_reply_raw(r, 200, text, strlen(text), "text/plain; version=0.0.4; charset=utf-8");
}

/* POST /v1/turnpike/log_level {level}: change the threshold of this process
 * now (not persisted; the config file's [log] level applies at the next
 * start). Replies with the previous and the new level. */
void tp_h_log_level(struct tp_req *r)
{
  static const char *const names[] = {"debug", "info", "warn", "error"};
  /* The level is every tenant's: only the operator's host may change it
   * (a merchant's key from elsewhere could hide the others' request log). */
  if (!tp_req_client_is_loopback(r)) {
    tp_reply_error(r, TP_ERR_IP_NOT_ALLOWED, NULL,
                   "The log level is the whole process's: it is changed from the gateway's own host only.");
    return;
  }
  const char *bad = NULL;
  const char *k;
  json_t *v;
  json_object_foreach(r->params, k, v)
  {
    if (strcmp(k, "level") != 0) {
      bad = k;
      break;
    }
  }
  if (bad) {
    tp_reply_error(r, TP_ERR_PARAMETER_UNKNOWN, bad, NULL);
    return;
  }
  const char *lv = json_string_value(json_object_get(r->params, "level"));
  if (!lv) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "level", NULL);
    return;
  }
  int n = tp_log_level_parse(lv);
  if (n < 0) {
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "level", "level must be one of debug, info, warn, error.");
    return;
  }
  int old = tp_log_threshold;
  /* Logged at error before the switch, so that a change to "error" is not
   * the first line it hides, and audited with the change (the level is the
   * whole process's, every tenant's). */
  tp_log(TP_LOG_ERROR, "log_level_changed", "{s:s, s:s, s:s, s:s}", "from", names[old & 3], "to", names[n],
         "merchant", r->merchant.id, "request_id", r->request_id);
  tp_log_threshold = n;
  struct tp_cs *cs = tp_cs_new();
  json_t *d = tp_pack("{s:s, s:s}", "from", names[old & 3], "to", names[n]);
  tp_audit_append(cs, r->merchant.id, r->actor[0] ? r->actor : "api", "log_level.changed", NULL, d);
  json_decref(d);
  tp_reply_json(r, 200, tp_pack("{s:s, s:s, s:s}", "object", "turnpike.log_level", "level", names[n],
                                   "previous", names[old & 3]));
  tp_commit_and_reply(r, cs);
}

/* turnpike: one binary, subcommands serve | merchant | migrate. */
#include "api/http.h"
#include "cli.h"
#include "config.h"
#include "connectors/connector.h"
#include "api/objects.h"
#include "core/payflow.h"
#include "core/procs.h"
#include "core/router.h"
#include "jpack.h"
#include "log.h"
#include "proxies.h"
#include "main/commands.h"
#include "main/features.h"
#include "sec/audit.h"
#include "sec/auth.h"
#include "sec/kek.h"
#include "sec/ratelimit.h"
#include "sec/tls.h"
#include "sec/vault.h"
#include "store/sqlite/pcache.h"
#include "store/store.h"
#include "util.h"

#include <ini.h>
#include <sqlite3.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

struct config {
  char listen[256];
  char data[1024];
  char public_url[256];
  unsigned threads;
  char log_level[16];
};

static void config_defaults(struct config *c)
{
  memset(c, 0, sizeof *c);
  snprintf(c->listen, sizeof c->listen, "127.0.0.1:8420");
  snprintf(c->data, sizeof c->data, "./var");
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  c->threads = n > 0 ? (unsigned)n : 2;
  snprintf(c->log_level, sizeof c->log_level, "info");
}

/* One setting from the INI file or the environment. */
static int config_set(struct config *c, const char *section, const char *key, const char *value)
{
  if (strcasecmp(section, "server") == 0) {
    if (strcasecmp(key, "listen") == 0)
      tp_scopy(c->listen, sizeof c->listen, value);
    else if (strcasecmp(key, "data") == 0)
      tp_scopy(c->data, sizeof c->data, value);
    else if (strcasecmp(key, "public_url") == 0) {
      /* An http(s) URL the links it makes (3-D Secure pages, request logs,
       * the OAuth issuer) are appended to: a trailing '/' made them "//v1/"
       * (404), a longer one was cut short. */
      size_t n = strlen(value);
      size_t scheme = strncasecmp(value, "http://", 7) == 0 ? 7 : strncasecmp(value, "https://", 8) == 0 ? 8 : 0;
      while (n > scheme && value[n - 1] == '/')
        n--;
      /* a host after the scheme, and nothing a link cannot be appended to:
       * no whitespace or control character, no query, no fragment */
      if (!scheme || n >= sizeof c->public_url || n == scheme || value[scheme] == '/')
        return 0;
      for (size_t i = 0; i < n; i++)
        if ((unsigned char)value[i] <= ' ' || value[i] == '?' || value[i] == '#' || value[i] == 0x7f)
          return 0;
      memcpy(c->public_url, value, n);
      c->public_url[n] = '\0';
    }
    else if (strcasecmp(key, "threads") == 0) {
      char *end;
      long t = strtol(value, &end, 10);
      if (end == value || *end || t < 1 || t > 256)
        return 0;
      c->threads = (unsigned)t;
    } else if (strcasecmp(key, "lock_wait_ms") == 0) { /* read by server.c */
      char *end;
      long ms = strtol(value, &end, 10);
      if (end == value || *end || ms < 0 || ms > 60000)
        return 0;
    } else if (strcasecmp(key, "reply_memory_mb") == 0) { /* read by server.c */
      char *end;
      long mb = strtol(value, &end, 10);
      if (end == value || *end || mb < 1 || mb > 1048576)
        return 0;
    } else if (strcasecmp(key, "core_dumps") != 0 && /* read through tp_config_bool */
               strcasecmp(key, "trusted_proxies") != 0 && strcasecmp(key, "forwarded_header") != 0) /* tp_proxies_init */
      return 0;
    return 1;
  }
  if (strcasecmp(section, "log") == 0 && strcasecmp(key, "level") == 0) {
    if (tp_log_level_parse(value) < 0)
      return 0;
    tp_scopy(c->log_level, sizeof c->log_level, value);
    return 1;
  }
  if (strcasecmp(section, "log") == 0)
    return strcasecmp(key, "requests") == 0 || strcasecmp(key, "buffer_ms") == 0; /* read by the features */
  /* Other sections belong to the features, which read them through
   * src/lib/config.h and validate them themselves. */
  return 1;
}

/* The sections a gateway's INI file may have: a misspelled one
 * ("[procesor.acq]") was ignored, and the sandbox took every payment. */
static bool known_section(const char *section)
{
  static const char *const names[] = {"alerts", "audit", "auth", "authorizations", "balance", "disputes", "events",
                                      "idempotency", "log", "metrics", "oauth", "ratelimit", "routing", "search",
                                      "server", "store", "stream", "tls", "tokens", "vault", "webhooks", "sim", NULL};
  static const char *const prefixes[] = {"processor.", "route.", "sim.", NULL};
  for (int i = 0; names[i]; i++)
    if (strcasecmp(section, names[i]) == 0)
      return true;
  for (int i = 0; prefixes[i]; i++)
    if (strncasecmp(section, prefixes[i], strlen(prefixes[i])) == 0 && section[strlen(prefixes[i])])
      return true;
  return false;
}

/* The keys of the sections the features read (src/lib/config.h), so that a
 * misspelt one ("private_network = deny", "rat = 2") stops the start
 * instead of leaving the default: [server] and [log] are config_set's,
 * [processor.*] and [route.*] their loaders', [sim*] the simulator's. A
 * name ending in '.' is a prefix ("fee.usd"). */
static const char *const section_keys[][24] = {
  {"alerts", "enabled", "bucket_ms", "min_samples", "alpha", "k", "min_abs_rate", "dev_floor_rate",
   "min_abs_latency_ms", "dev_floor_latency_ms", "warmup_buckets", "open_after", "resolve_after", "merchants", NULL},
  {"audit", "checkpoint_entries", "checkpoint_seconds", NULL},
  {"auth", "cache_seconds", NULL},
  {"authorizations", "expire_after_seconds", "scan_interval_ms", NULL},
  {"balance", "available_after_seconds", NULL},
  {"disputes", "fee", "fee.", NULL},
  {"events", "purge_interval_ms", "retention_seconds", NULL},
  {"idempotency", "purge_interval_ms", "ttl_seconds", NULL},
  {"metrics", "public", "token", NULL},
  {"oauth", "audience", "issuer", "token_ttl", NULL},
  {"ratelimit", "auth_failures", "auth_window", "burst", "rate", NULL},
  {"routing", "backoff_base_ms", "backoff_cap_ms", "bandit_window", "deadline_ms", "max_retries",
   "recovery_interval_ms", "reversal_backoff_max_ms", "startup_settle_ms", "startup_signon_ms", NULL},
  {"search", "max_concurrent", "max_scan_rows", NULL},
  {"store", "checkpoint_pages", "commit_sync", "compress", "min_free_mb", NULL},
  {"stream", "max_connections", "max_connections_per_account", "ping_interval_ms", "queue_max", "replay_max",
   "send_buffer_bytes", "socket_sndbuf", "token_ttl_s", NULL},
  {"tls", "cert", "key", "min_version", NULL},
  {"tokens", "ttl_seconds", NULL},
  {"vault", "kek", "kek_poll_seconds", "pkcs11_audit_label", "pkcs11_key_label", "pkcs11_module", "pkcs11_pin",
   "pkcs11_token_label", "rewrap_batch", "rewrap_pause_ms", "rewrap_settle_ms", NULL},
  {"webhooks", "connect_timeout_ms", "disable_after_s", "enabled", "max_age_s", "max_in_flight",
   "max_in_flight_per_endpoint", "private_networks", "retry_base_ms", "retry_factor_percent", "retry_max_ms",
   "retry_schedule", "scan_interval_ms", "stop_wait_ms", "timeout_ms", NULL},
};

/* 1: a key of that section, 0: not, -1: the section has no table here. */
static int known_key(const char *section, const char *key)
{
  for (size_t i = 0; i < sizeof section_keys / sizeof section_keys[0]; i++) {
    if (strcasecmp(section, section_keys[i][0]) != 0)
      continue;
    for (int j = 1; section_keys[i][j]; j++) {
      size_t n = strlen(section_keys[i][j]);
      if (section_keys[i][j][n - 1] == '.' ? strncasecmp(key, section_keys[i][j], n) == 0 && key[n]
                                           : strcasecmp(key, section_keys[i][j]) == 0)
        return 1;
    }
    return 0;
  }
  return -1;
}

static int ini_cb(void *user, const char *section, const char *name, const char *value)
{
  /* JSON lines like every other on standard error (the log stream). */
  if (!*section) {
    /* before any [section]: a setting of none, meant for one (a section
     * line lost in an edit); refused like an unknown key (it started on
     * the defaults with a warning) */
    tp_log(TP_LOG_ERROR, "config_outside_section", "{s:s, s:s}", "key", name, "hint",
           "every setting goes under its [section]: etc/turnpike.ini");
    return 0;
  }
  if (!known_section(section)) {
    tp_log(TP_LOG_ERROR, "config_unknown_section", "{s:s, s:s}", "section", section, "hint",
           "README.md (Configuration) and etc/turnpike.ini list the sections");
    return 0;
  }
  if (known_key(section, name) == 0) {
    tp_log(TP_LOG_ERROR, "config_unknown_key", "{s:s, s:s, s:s}", "section", section, "key", name, "hint",
           "etc/turnpike.ini lists the keys");
    return 0;
  }
  tp_config_put(section, name, value);
  int ok = config_set(user, section, name, value);
  if (!ok)
    tp_log(TP_LOG_ERROR, "config_invalid", "{s:s, s:s}", "section", section, "key", name);
  return ok;
}

/* The TURNPIKE_* overrides read here; false when one is not valid (logged):
 * serve stops, as for the same value in the file. */
static bool config_env(struct config *c)
{
  bool all_ok = true;
  static const char *const keys[][2] = {{"SERVER", "LISTEN"}, {"SERVER", "DATA"}, {"SERVER", "PUBLIC_URL"},
                                        {"SERVER", "THREADS"}, {"LOG", "LEVEL"}};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    char var[96];
    snprintf(var, sizeof var, "TURNPIKE_%s_%s", keys[i][0], keys[i][1]);
    const char *v = getenv(var);
    if (v && !*v) /* set but empty (a container's blank variable): not set */
      continue;
    if (v && !config_set(c, keys[i][0], keys[i][1], v)) {
      tp_log(TP_LOG_ERROR, "config_invalid", "{s:s}", "variable", var);
      all_ok = false;
    }
  }
  return all_ok;
}

static void usage(FILE *f)
{
  fprintf(f, "usage: turnpike COMMAND [OPTIONS]\n\n"
             "Turnpike is a Stripe-compatible payment gateway.\n\n"
             "commands:\n"
             "  serve                 run the gateway (HTTP API on --listen)\n"
             "  merchant create       create a merchant and print its API keys as JSON\n"
             "  migrate               create or upgrade the store in --data, then exit\n"
             "  backup                write a consistent, checked copy of the store while it runs\n"
             "  restore               put a backup in place as the store (the server stopped)\n"
             "  sim                   run the processor simulator (REST/JSON and ISO 8583)\n"
             "  sim journal           print the simulator's journal as JSON\n"
             "  kek rotate            create a new key-encryption key version\n"
             "  audit verify          check the hash chain and signed checkpoints of the audit log\n"
             "  oauth-client create   create an OAuth 2.0 client and print its credentials\n"
             "  oauth-client revoke   revoke an OAuth 2.0 client and its tokens\n"
             "  api-key roll          roll the secret (or publishable) key, the old one valid for an overlap\n"
             "  api-key revoke        end one API key now (by the key or its hint)\n"
             "  api-key create        create a restricted (rk_) API key with scopes\n"
             "  help                  this text; `turnpike COMMAND --help` describes a command\n");
}

static void usage_serve(FILE *f)
{
  fprintf(f, "usage: turnpike serve [--listen HOST:PORT] [--data DIR] [--config FILE] [--log-level LEVEL]\n\n"
             "  --listen HOST:PORT  address to listen on: IPv4, [IPv6] or localhost (default 127.0.0.1:8420;\n"
             "                      port 0 picks a free port and writes the bound address to DIR/serve.addr)\n"
             "  --data DIR          data directory: SQLite store, vault key (default ./var)\n"
             "  --config FILE       INI file (see etc/turnpike.ini); TURNPIKE_<SECTION>_<KEY> overrides\n"
             "  --log-level LEVEL   debug | info | warn | error (default info)\n"
             "  --tls-cert FILE     serve HTTPS with this PEM certificate (chain) ([tls] cert)\n"
             "  --tls-key FILE      the certificate's PEM private key ([tls] key)\n"
             "  --tls-min-version V 1.2 (default: TLS 1.2 and 1.3) or 1.3 ([tls] min_version)\n\n"
             "With an empty store, a demo merchant is created and its test key printed.\n"
             "SIGTERM/SIGINT stop accepting, finish in-flight requests, commit and exit 0.\n"
             "SIGHUP looks for a new key-encryption key version at once (after `turnpike kek rotate`).\n");
}

static void usage_merchant(FILE *f)
{
  fprintf(f, "usage: turnpike merchant create [--data DIR] --name NAME\n\n"
             "--data defaults to $TURNPIKE_SERVER_DATA, else ./var (as serve).\n"
             "Creates a merchant and prints {\"id\",\"secret_key\",\"publishable_key\"} as JSON on stdout.\n"
             "Keys are stored only as SHA-256 hashes: this is the only time they are shown.\n");
}

/* Audit a new merchant and its first keys on a store without a running
 * writer. Only key hints (prefix and last 4) go in: the log is readable by
 * auditors, a full key would be a credential. 0 or -1. */
static int audit_merchant_created(struct tp_store *st, const char *actor, const char *id, const char *name,
                                  const char *sk, const char *pk)
{
  char skh[32], pkh[32];
  size_t sl = strlen(sk), pl = strlen(pk);
  snprintf(skh, sizeof skh, "%.8s...%s", sk, sk + (sl > 4 ? sl - 4 : 0));
  snprintf(pkh, sizeof pkh, "%.8s...%s", pk, pk + (pl > 4 ? pl - 4 : 0));
  json_t *details = tp_pack("{s:s, s:s, s:s}", "name", name, "secret_key", skh, "publishable_key", pkh);
  struct tp_cs *cs = tp_cs_new();
  tp_audit_append(cs, id, actor, "merchant.created", id, details);
  json_decref(details);
  int rc = -1;
  int brc = st->ops->apply_batch(st->cls, &cs, 1, &rc); /* a failed COMMIT fails the batch, rc stays 0 */
  tp_cs_free(cs);
  return brc == 0 && rc == 0 ? 0 : -1;
}

static int write_addr_file(const char *dir, const char *host, uint16_t port)
{
  char tmp[1200], path[1200];
  snprintf(tmp, sizeof tmp, "%s/serve.addr.tmp", dir);
  snprintf(path, sizeof path, "%s/serve.addr", dir);
  FILE *f = fopen(tmp, "w");
  if (!f)
    return -1;
  char a[300];
  tp_cli_hostport_fmt(a, sizeof a, host, port);
  fprintf(f, "%s\n", a);
  if (fclose(f) != 0)
    return -1;
  return rename(tmp, path);
}

/* Ids sort by time (lists, event order, the stream's resume, webhook scan
 * floors): after a restart on a wall clock stepped back, new ids must still
 * sort above every stored one. Every object's creation commits an event
 * numbered at commit (tp_cs_number_events), so the newest event id (one
 * index seek per merchant) bounds every id made before; tp_id_new continues
 * from there until the clock passes it. */
static void seed_ids(struct tp_store *st)
{
  json_t *rows = tp_store_query(st,
                                "SELECT (SELECT max(e.id) FROM events e WHERE e.merchant = m.id) AS e FROM merchants m",
                                NULL);
  int64_t ms = 0;
  for (size_t i = 0; i < json_array_size(rows); i++) {
    int64_t t = tp_id_ms(json_string_value(json_object_get(json_array_get(rows, i), "e")));
    if (t > ms)
      ms = t;
  }
  json_decref(rows);
  struct timeval tv;
  gettimeofday(&tv, NULL);
  int64_t now = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
  if (ms > now)
    tp_log(TP_LOG_WARN, "clock_behind_store", "{s:I, s:s}", "behind_ms", (json_int_t)(ms - now), "action",
           "new ids continue from the newest stored one until the clock catches up");
  tp_id_seed(ms);
}

/* The demo merchant made by a start that then failed (show_unshown_demo). */
static struct {
  char id[TP_ID_MAX], sk[128], pk[128];
} demo_unshown;

static void show_unshown_demo(void)
{
  if (!demo_unshown.id[0])
    return;
  /* On standard output, as the banner would have been: standard error is
   * the JSON log stream, where a shipper would keep a live secret key. */
  fflush(stdout);
  fprintf(stdout,
          "\nThe gateway did not start, but its empty store got a demo merchant (%s) first.\n"
          "Its test secret key, for the next start:\n\n  %s\n\nand its publishable key:\n\n  %s\n\n",
          demo_unshown.id, demo_unshown.sk, demo_unshown.pk);
}


/* A start given up after the background threads ran: they are stopped in
 * order (the audit chain's head signed, the writer drained) rather than
 * left running into exit. 1, serve's failure. */
static void stop_background(void)
{
  tp_housekeeping_stop();
  tp_alerts_stop();
  tp_stream_stop();
  tp_webhooks_stop();
  tp_writer_stop();
  tp_procs_stop();
}

static int stop_early(void)
{
  tp_payflow_stop(); /* recovery's ticks and retries, before what they use goes */
  tp_kek_stop();
  stop_background();
  return 1;
}

static int cmd_serve(int argc, char **argv)
{
  struct config c;
  config_defaults(&c);
  const char *cfg = NULL, *listen = NULL, *data = NULL, *level = NULL;
  const char *tls_cert = NULL, *tls_key = NULL, *tls_min = NULL;
  for (int i = 0; i < argc; i++) {
    const char *v;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage_serve(stdout);
      return 0;
    } else if ((v = tp_cli_value(argc, argv, &i, "--listen", "serve")))
      listen = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--data", "serve")))
      data = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--config", "serve")))
      cfg = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--log-level", "serve")))
      level = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--tls-cert", "serve")))
      tls_cert = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--tls-key", "serve")))
      tls_key = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--tls-min-version", "serve")))
      tls_min = v;
    else {
      fprintf(stderr, "turnpike serve: unknown option %s\n", argv[i]);
      usage_serve(stderr);
      return 2;
    }
  }
  if (cfg) {
    int rc = tp_cli_ini_parse(cfg, ini_cb, &c);
    if (rc != 0) {
      tp_log(TP_LOG_ERROR, "config_invalid_stop", "{s:s, s:s, s:i}", "file", cfg, "why",
             rc < 0 ? "cannot read" : "invalid setting", "line", rc);
      return 2;
    }
  }
  if (!config_env(&c))
    return 2;
  if (listen)
    tp_scopy(c.listen, sizeof c.listen, listen);
  if (data)
    tp_scopy(c.data, sizeof c.data, data);
  if (level)
    tp_scopy(c.log_level, sizeof c.log_level, level);
  int lvl = tp_log_level_parse(c.log_level);
  if (lvl < 0) {
    /* a JSON line, as every configuration error (observability.md 5); the
     * value may come from --log-level, [log] level or TURNPIKE_LOG_LEVEL */
    tp_log(TP_LOG_ERROR, "config_invalid_stop", "{s:s, s:s, s:s}", "setting", "log.level", "value", c.log_level,
           "why", "want debug, info, warn or error");
    return 2;
  }
  tp_log_threshold = lvl;
  char host[200];
  uint16_t port;
  struct sockaddr_storage listen_sa;
  socklen_t listen_len;
  /* A host name other than localhost is refused here, before the store is
   * made and a demo merchant created for a start that cannot listen. */
  if (tp_cli_hostport(c.listen, host, sizeof host, &port) != 0 ||
      tp_cli_sockaddr(host, port, &listen_sa, &listen_len) != 0) {
    tp_log(TP_LOG_ERROR, "config_invalid_stop", "{s:s, s:s, s:s}", "setting", "server.listen", "value", c.listen,
           "why", "want HOST:PORT: IPv4, [IPv6] or localhost (--listen, [server] listen or TURNPIKE_SERVER_LISTEN)");
    return 2;
  }

  /* Signals go to the main thread only; every other thread blocks them. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);
  /* A core file would hold card numbers that were in memory: none unless the
   * operator asks for them ([server] core_dumps = true). */
  if (!tp_config_bool("server", "core_dumps", false)) {
    struct rlimit no_core = {0, 0};
    if (setrlimit(RLIMIT_CORE, &no_core) != 0)
      tp_log(TP_LOG_WARN, "core_dumps_not_disabled", "{s:s}", "error", strerror(errno));
  }

  /* 4096 HTTP connections (TP_HTTP_MAX_CONNECTIONS) plus webhooks, stream,
   * processors and the store: a shell's default 1024 would refuse
   * connections under load long before that. */
  long nofile = tp_cli_raise_nofile(8192);
  if (nofile < 4096 + 256)
    tp_log(TP_LOG_WARN, "open_files_limited", "{s:i, s:s}", "limit", (int)nofile, "hint",
           "raise the hard limit (ulimit -Hn, LimitNOFILE=) to serve 4096 connections");
  /* HTTPS settings are checked before anything is made or started (a
   * missing key file, min_version 1.1: refused after the store, a demo
   * merchant and every thread had been made; review, session 41). */
  int tls = tp_tls_configure(tls_cert, tls_key, tls_min);
  if (tls < 0)
    return 2;
  tp_scopy(tp_app.data_dir, sizeof tp_app.data_dir, c.data);
  /* Before anything in the directory is touched: a second server would
   * remove the first's serve.addr and share its store. */
  long holder = 0;
  int lock_fd = tp_cli_lock_dir(c.data, "turnpike.lock", true, &holder);
  if (lock_fd == -2) {
    tp_log(TP_LOG_ERROR, "data_dir_in_use", "{s:s, s:I, s:s}", "data", c.data, "pid", (json_int_t)holder, "hint",
           "another turnpike serve uses this --data directory; stop it or choose another");
    return 1;
  }
  if (lock_fd < 0) {
    tp_log(TP_LOG_ERROR, "data_dir_lock_failed", "{s:s, s:s}", "data", c.data, "error", strerror(errno));
    return 1;
  }
  char addr_path[1200];
  snprintf(addr_path, sizeof addr_path, "%s/serve.addr", c.data);
  unlink(addr_path);
  tp_store_corrupt_watch();
  if (tp_store_open_sqlite(&tp_app.store, c.data) != 0) {
    tp_log(TP_LOG_ERROR, "store_open_failed", "{s:s}", "data", c.data);
    return 1;
  }
  seed_ids(&tp_app.store);
  /* vault.key seals card records, webhook secrets and idempotency
   * fingerprints: a store that holds any of them and has lost the file
   * (a restore without its keys) must not get a new one silently, which
   * made every replay a mismatch and every saved card a 500. */
  char vkey[1200];
  snprintf(vkey, sizeof vkey, "%s/vault.key", c.data);
  if (access(vkey, F_OK) != 0) {
    json_t *used = tp_store_query(&tp_app.store,
                                  "SELECT EXISTS(SELECT 1 FROM vault) OR EXISTS(SELECT 1 FROM idempotency) OR "
                                  "EXISTS(SELECT 1 FROM webhook_endpoints) OR EXISTS(SELECT 1 FROM payment_intents) OR "
                                  "EXISTS(SELECT 1 FROM meta WHERE key = 'vault_key_check') AS n",
                                  NULL);
    bool held = !used || json_integer_value(json_object_get(json_array_get(used, 0), "n")) != 0;
    json_decref(used);
    if (held) {
      tp_log(TP_LOG_ERROR, "vault_key_missing", "{s:s, s:s}", "path", vkey, "message",
             "the store holds sealed data but its key file is gone: put the vault.key (and kek-v*.key) that "
             "came with it back in the data directory");
      return 1;
    }
  }
  if (tp_vault_init(c.data, tp_app.vault_key) != 0 || tp_vault_key_check(&tp_app.store) != 0 ||
      tp_fp_keys_mask(&tp_app.store) != 0)
    return 1;
  /* Card vault KEK provider ([vault] kek = file | pkcs11), before the writer. */
  if (tp_kek_init(&tp_app.store, c.data, cfg) != 0)
    return tp_kek_pin_refused() ? TP_EXIT_PIN_REFUSED : 1;
  bool demo = false;
  char *demo_id = demo_unshown.id, *demo_sk = demo_unshown.sk, *demo_pk = demo_unshown.pk;
  if (tp_app.store.ops->merchant_count(tp_app.store.cls) == 0) {
    if (tp_app.store.ops->merchant_create(tp_app.store.cls, "Demo merchant", demo_id, demo_sk, demo_pk) != 0)
      return 1;
    if (audit_merchant_created(&tp_app.store, "system", demo_id, "Demo merchant", demo_sk, demo_pk) != 0) {
      tp_log(TP_LOG_ERROR, "audit_write_failed", "{s:s}", "action", "merchant.created");
      return 1;
    }
    demo = true;
    /* Shown with the banner once listening; if the start fails before that
     * (a port in use, a bad TLS file), on exit instead: the store is no
     * longer empty, and the next start would create no demo to show. */
    atexit(show_unshown_demo);
  }
  if (tp_writer_start(&tp_app.store) != 0)
    return 1;
  tp_iso8583_state_dir(c.data);
  if (tp_procs_start() != 0 || tp_router_load(tp_proc_known) != 0)
    return 1;
  /* ISO 8583 links sign on first, for a while: recovery's reversals and the
   * first payments went to a link not signed on yet and failed
   * (processor_link_down: an attempt the start-up pass could not settle,
   * payments answered 502 or cascaded in the first milliseconds). Not for
   * long: a host that is down must not keep the gateway from starting. */
  int64_t signon_until = tp_mono_ms() + tp_config_int("routing", "startup_signon_ms", 3000, 0, 600000);
  for (size_t i = 0; i < tp_procs_count(); i++) {
    struct tp_proc *pr = tp_proc_at(i);
    if (strcmp(pr->type, "iso8583") != 0)
      continue;
    while (!tp_iso8583_signed_on(&pr->conn) && tp_mono_ms() < signon_until)
      usleep(5000);
    if (!tp_iso8583_signed_on(&pr->conn))
      tp_log(TP_LOG_WARN, "iso_not_signed_on_at_start", "{s:s}", "processor", pr->name);
  }

  /* Resolve attempts a crash left in flight before taking new work, for a
   * while: a client retrying then gets the settled answer rather than 409.
   * Not for long: with a processor down its attempts cannot settle, and
   * every other payment would wait for it (the unsettled ones are safe
   * meanwhile: their PaymentIntents refuse other money movements, and the
   * recovery timer goes on). */
  int rec = tp_recover();
  if (rec > 0) {
    int64_t until = tp_mono_ms() + tp_config_int("routing", "startup_settle_ms", 5000, 0, 600000);
    for (;;) {
      struct tp_attempt *left = NULL;
      size_t n = 0;
      if (tp_app.store.ops->attempts_in_state(tp_app.store.cls, "sent", &left, &n) != 0 || n == 0 ||
          tp_mono_ms() > until) {
        free(left);
        break;
      }
      free(left);
      usleep(20000);
    }
    tp_log(TP_LOG_INFO, "recovery_done", "{s:i}", "attempts", rec);
  }

  if (tp_webhooks_start() != 0 || tp_stream_start() != 0 || tp_alerts_start() != 0 || tp_housekeeping_start() != 0)
    return 1;
  if (tp_kek_start() != 0) /* KEK version poll, re-wrap, audit checkpoints */
    return 1;

  /* HTTPS, OAuth signing key, rate limits: before the first request. */
  if (tp_oauth_init(c.data) != 0 || tp_proxies_init() != 0)
    return stop_early();
  tp_ratelimit_init();
  /* Settings read so far that were there but not valid (config_invalid,
   * each read as its default: a rate limit off, an authorization voided
   * early, a refund reserve shortened): stop rather than run weaker than
   * written. The lazily read ones that decide money are read now. */
  (void)tp_authorization_ttl();
  /* read later, checked now: the request log, its buffering, /metrics's
   * audience */
  int log_buffer_ms = (int)tp_config_int("log", "buffer_ms", 100, 0, 1000);
  (void)tp_config_bool("log", "requests", true);
  (void)tp_config_bool("metrics", "public", false);
  (void)tp_config_bool("store", "compress", true); /* zjson.c reads it at the first frame */
  /* and those read only when a request or a tick comes to them */
  (void)tp_config_int("auth", "cache_seconds", 30, 0, 3600);           /* apikey.c, oauth.c */
  (void)tp_config_int("oauth", "token_ttl", 3600, 60, 86400);          /* oauth.c */
  (void)tp_config_int("search", "max_scan_rows", 1000, 10, 100000);    /* search.c */
  (void)tp_config_int("search", "max_concurrent", 1, 1, 1024);         /* search.c */
  (void)tp_config_int("audit", "checkpoint_seconds", 60, 1, 86400);    /* audit.c, each tick */
  (void)tp_config_int("audit", "checkpoint_entries", 1000, 1, 10000000);
  (void)tp_config_int("routing", "startup_settle_ms", 5000, 0, 600000); /* only with attempts to settle */
  if (!tp_disputes_config_ok() || tp_config_invalid_count() > 0) {
    tp_log(TP_LOG_ERROR, "config_invalid_stop", "{s:i, s:s}", "values", tp_config_invalid_count(), "why",
           "a setting above is not valid (config_invalid): fix it or remove it");
    return stop_early();
  }
  uint16_t bound = 0;
  if (tp_http_listen(host, port, &bound) != 0) {
    tp_log(TP_LOG_ERROR, "listen_failed", "{s:s, s:s}", "listen", c.listen, "error", strerror(errno));
    return stop_early();
  }
  /* before the first request can arrive (tp_http_start): replies link to it */
  if (c.public_url[0])
    tp_scopy(tp_app.public_url, sizeof tp_app.public_url, c.public_url);
  else
  {
    char hp[200];
    tp_cli_hostport_fmt(hp, sizeof hp, host, bound);
    snprintf(tp_app.public_url, sizeof tp_app.public_url, "%s://%s", tls > 0 ? "https" : "http", hp);
  }
  if (tp_http_start(c.threads) != 0) {
    tp_log(TP_LOG_ERROR, "listen_failed", "{s:s, s:s}", "listen", c.listen, "error", strerror(errno));
    return stop_early();
  }
  if (write_addr_file(c.data, host, bound) != 0)
    tp_log(TP_LOG_WARN, "addr_file_failed", "{s:s}", "error", strerror(errno));
  tp_log(TP_LOG_INFO, "listening", "{s:s, s:s, s:i, s:s}", "address", tp_app.public_url, "data", c.data, "threads",
         (int)c.threads, "store", tp_app.store.ops->name);
  if (demo) {
    printf("Turnpike is running at %s\n\n"
           "A demo merchant was created (%s). Its test secret key:\n\n  %s\n\n"
           "and its publishable key, for browsers (tokenise a card, confirm with a client_secret):\n\n  %s\n\n"
           "Try a payment:\n\n"
           "  curl %s/v1/payment_intents -u %s: \\\n"
           "    -d amount=2000 -d currency=usd -d confirm=true -d payment_method=pm_card_visa\n\n",
           tp_app.public_url, demo_id, demo_sk, demo_pk, tp_app.public_url, demo_sk);
    fflush(stdout);
    demo_unshown.id[0] = '\0'; /* shown */
  } else {
    /* A later start says where it is too (the keys were shown at the first:
     * one who lost them is told how to get more). */
    printf("Turnpike is running at %s (data in %s)\n\n"
           "Its merchants' keys were printed when they were made. Another merchant:\n"
           "  turnpike merchant create --data %s --name NAME\n"
           "a new secret key for one (the old one keeps working for a day):\n"
           "  turnpike api-key roll --data %s --merchant acct_...\n\n",
           tp_app.public_url, c.data, c.data, c.data);
    fflush(stdout);
  }

  /* Request lines are written in batches from here on (src/lib/log.c). */
  if (tp_log_buffer_start(log_buffer_ms) != 0)
    tp_log(TP_LOG_WARN, "log_buffer_unavailable", NULL);
  int sig = 0;
  for (;;) {
    sigwait(&sigs, &sig);
    if (sig != SIGHUP)
      break;
    tp_kek_poke(); /* e.g. after `turnpike kek rotate` */
  }
  tp_log(TP_LOG_INFO, "shutting_down", "{s:i, s:i}", "signal", sig, "inflight", (int)tp_http_inflight());
  tp_app.shutting_down = 1;
  tp_http_stop(10000);
  tp_payflow_stop(); /* pending retries settle before the writer stops */
  tp_kek_stop();
  struct tp_writer_stats ws;
  tp_writer_stats(&ws);
  struct tp_pcache_counts pc;
  tp_pcache_counts(&pc);
  tp_log(TP_LOG_INFO, "writer_stats", "{s:I, s:I, s:I, s:I, s:I, s:I}", "batches", (json_int_t)ws.batches,
         "change_sets", (json_int_t)ws.sets, "max_batch", (json_int_t)ws.max_batch, "commit_us_avg",
         (json_int_t)(ws.batches ? ws.commit_ns_total / ws.batches / 1000 : 0), "pcache_truncations",
         (json_int_t)pc.passed, "pcache_scans_saved", (json_int_t)pc.scans_saved);
  stop_background();
  tp_app.store.ops->close(tp_app.store.cls);
  unlink(addr_path);
  tp_log(TP_LOG_INFO, "stopped", NULL);
  tp_log_buffer_stop();
  return 0;
}

static int cmd_merchant(int argc, char **argv)
{
  if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
    usage_merchant(argc < 1 ? stderr : stdout);
    return argc < 1 ? 2 : 0;
  }
  if (strcmp(argv[0], "create") != 0) {
    usage_merchant(stderr);
    return 2;
  }
  const char *data = tp_cli_default_data(NULL), *name = NULL;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if (strcmp(argv[i], "--help") == 0) {
      usage_merchant(stdout);
      return 0;
    } else if ((v = tp_cli_value(argc, argv, &i, "--data", "merchant create")))
      data = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--name", "merchant create")))
      name = v;
    else {
      fprintf(stderr, "turnpike merchant create: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (!name || !*name || strlen(name) > 100) {
    fprintf(stderr, "turnpike merchant create: --name NAME is required (1-100 chars)\n");
    return 2;
  }
  /* Text, as every name the API shows is (a Latin-1 "Caf\xe9" was stored,
   * then read back as nothing, and crashed the server at the key's use). */
  bool printable = tp_utf8_valid(name, strlen(name));
  for (const unsigned char *c = (const unsigned char *)name; *c && printable; c++)
    printable = *c >= 0x20 && *c != 0x7f;
  if (!printable) {
    fprintf(stderr, "turnpike merchant create: --name must be UTF-8 text without control characters\n");
    return 2;
  }
  tp_log_threshold = TP_LOG_WARN;
  struct tp_store st;
  if (tp_store_open_sqlite(&st, data) != 0)
    return 1;
  char id[TP_ID_MAX], sk[128], pk[128];
  int rc = st.ops->merchant_create(st.cls, name, id, sk, pk);
  /* The store op commits on its own, so the entry follows in a second
   * transaction; a failure here is reported and the keys are not shown. */
  int arc = rc == 0 ? audit_merchant_created(&st, "cli", id, name, sk, pk) : 0;
  st.ops->close(st.cls);
  if (rc != 0 || arc != 0) {
    fprintf(stderr, "turnpike merchant create: %s\n", rc != 0 ? "failed" : "audit log write failed");
    return 1;
  }
  json_t *o = tp_pack("{s:s, s:s, s:s}", "id", id, "secret_key", sk, "publishable_key", pk);
  char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  printf("%s\n", s);
  free(s);
  json_decref(o);
  return 0;
}

static int cmd_migrate(int argc, char **argv)
{
  const char *data = tp_cli_default_data(NULL);
  for (int i = 0; i < argc; i++) {
    const char *v;
    if (strcmp(argv[i], "--help") == 0) {
      printf("usage: turnpike migrate [--data DIR]\n\nCreates or upgrades the store, then exits.\n");
      return 0;
    } else if ((v = tp_cli_value(argc, argv, &i, "--data", "migrate")))
      data = v;
    else {
      fprintf(stderr, "turnpike migrate: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  /* Not under a running server: it would change the schema of the store
   * that server has open, as restore refuses to. */
  long holder = 0;
  int lock_fd = tp_cli_lock_dir(data, "turnpike.lock", true, &holder);
  if (lock_fd < 0) {
    if (lock_fd == -2)
      fprintf(stderr, "turnpike migrate: a server (pid %ld) uses %s: stop it first\n", holder, data);
    else
      fprintf(stderr, "turnpike migrate: cannot lock %s: %s\n", data, strerror(errno));
    return 1;
  }
  struct tp_store st;
  int rc = tp_store_open_sqlite(&st, data) != 0;
  if (!rc)
    st.ops->close(st.cls);
  close(lock_fd);
  return rc;
}

int main(int argc, char **argv)
{
  /* SQLite's process-wide settings are made before it initialises, by the
   * constructor that registers the audit functions (sec/audit.c). */
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "serve") == 0)
    return cmd_serve(argc - 2, argv + 2);
  if (strcmp(argv[1], "merchant") == 0)
    return cmd_merchant(argc - 2, argv + 2);
  if (strcmp(argv[1], "migrate") == 0)
    return cmd_migrate(argc - 2, argv + 2);
  static const struct {
    const char *name;
    int (*fn)(int, char **);
  } more[] = {{"sim", tp_cmd_sim}, {"kek", tp_cmd_kek}, {"audit", tp_cmd_audit},
              {"oauth-client", tp_cmd_oauth_client}, {"api-key", tp_cmd_api_key}, {"backup", tp_cmd_backup},
              {"restore", tp_cmd_restore}};
  for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
    if (strcmp(argv[1], more[i].name) == 0)
      return more[i].fn(argc - 2, argv + 2);
  fprintf(stderr, "turnpike: unknown command %s\n", argv[1]);
  usage(stderr);
  return 2;
}

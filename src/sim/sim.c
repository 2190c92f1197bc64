/* `turnpike sim`: the processor simulator's command line, start-up and
 * shutdown, and `turnpike sim journal` (prints the journal from the store). */
#include "sim/sim.h"
#include "cli.h"
#include "config.h"
#include "log.h"
#include "main/commands.h"
#include "util.h"

#include <errno.h>
#include <ini.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *f)
{
  fprintf(f,
          "usage: turnpike sim [--listen HOST:PORT] [--iso-listen HOST:PORT] [--data DIR] [--config FILE]\n"
          "                    [--threads N] [--log-level LEVEL]\n"
          "       turnpike sim journal --data DIR [--processor NAME] [--reference R] [--payment P] [--limit N]\n\n"
          "Runs simulated payment processors: a REST/JSON processor API on --listen (default\n"
          "127.0.0.1:8430) and an ISO 8583 acquirer host on --iso-listen (default 127.0.0.1:8431);\n"
          "addresses are IPv4, [IPv6] (\"[::1]:0\") or localhost.\n"
          "Every operation is committed to DIR/sim.db (default ./var-sim) before it is answered.\n"
          "With port 0 a free port is bound; once both listeners accept, \"REST_HOST:PORT\\nISO_HOST:PORT\\n\"\n"
          "is written to DIR/sim.addr. Processors are [sim.NAME] sections of the INI file\n"
          "(docs/simulator.md); run-time faults via POST /_sim/faults. SIGTERM/SIGINT stop cleanly.\n\n"
          "`sim journal` prints the journal and its charge summary as JSON (works while the sim runs).\n");
}

static int ini_cb(void *user, const char *section, const char *name, const char *value)
{
  (void)user;
  tp_config_put(section, name, value);
  return 1;
}

static int cmd_journal(int argc, char **argv)
{
  const char *data = NULL, *proc = NULL, *ref = NULL, *pay = NULL;
  int64_t limit = 1000;
  for (int i = 0; i < argc; i++) {
    const char *v;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else if ((v = tp_cli_value(argc, argv, &i, "--data", "sim journal")))
      data = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--processor", "sim journal")))
      proc = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--reference", "sim journal")))
      ref = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--payment", "sim journal")))
      pay = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--limit", "sim journal"))) {
      char *end;
      limit = strtoll(v, &end, 10);
      if (*end || limit < 1 || limit > 100000) {
        fprintf(stderr, "turnpike sim journal: --limit must be 1 to 100000\n");
        return 2;
      }
    } else {
      fprintf(stderr, "turnpike sim journal: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (!data) {
    fprintf(stderr, "turnpike sim journal: --data DIR is required\n");
    return 2;
  }
  char err[1300];
  json_t *o = tp_sim_journal_query_dir(data, proc, ref, pay, limit, err, sizeof err);
  if (!o) {
    fprintf(stderr, "turnpike sim journal: %s\n", err);
    return 1;
  }
  json_dumpf(o, stdout, JSON_INDENT(2));
  fputc('\n', stdout);
  json_decref(o);
  return 0;
}

static int write_addr(const char *dir, const char *rest, uint16_t rp, const char *iso, uint16_t ip)
{
  char tmp[1200], path[1200];
  snprintf(tmp, sizeof tmp, "%s/sim.addr.tmp", dir);
  snprintf(path, sizeof path, "%s/sim.addr", dir);
  FILE *f = fopen(tmp, "w");
  if (!f)
    return -1;
  char a[300], b[300];
  tp_cli_hostport_fmt(a, sizeof a, rest, rp);
  tp_cli_hostport_fmt(b, sizeof b, iso, ip);
  fprintf(f, "%s\n%s\n", a, b);
  if (fclose(f) != 0)
    return -1;
  return rename(tmp, path);
}

struct iso_pick {
  char name[TP_SIM_NAME_MAX];
};

static void pick_iso(const char *section, void *arg)
{
  struct iso_pick *p = arg;
  const char *proto = tp_config_get(section, "protocol");
  if (!p->name[0] && proto && !strcasecmp(proto, "iso") && tp_sim_name_ok(section + 4))
    tp_scopy(p->name, sizeof p->name, section + 4);
}

int tp_cmd_sim(int argc, char **argv)
{
  if (argc > 0 && !strcmp(argv[0], "journal"))
    return cmd_journal(argc - 1, argv + 1);
  const char *listen = "127.0.0.1:8430", *iso_listen = "127.0.0.1:8431", *data = "./var-sim", *cfg = NULL;
  const char *level = NULL;
  long threads = sysconf(_SC_NPROCESSORS_ONLN);
  if (threads < 1)
    threads = 2;
  for (int i = 0; i < argc; i++) {
    const char *v;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else if ((v = tp_cli_value(argc, argv, &i, "--listen", "sim")))
      listen = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--iso-listen", "sim")))
      iso_listen = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--data", "sim")))
      data = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--config", "sim")))
      cfg = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--log-level", "sim")))
      level = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--threads", "sim"))) {
      char *end;
      threads = strtol(v, &end, 10);
      if (*end || threads < 1 || threads > 256) {
        fprintf(stderr, "turnpike sim: --threads must be 1 to 256\n");
        return 2;
      }
    } else {
      fprintf(stderr, "turnpike sim: unknown option %s\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  char rhost[256], ihost[256];
  uint16_t rport, iport;
  if (tp_cli_hostport(listen, rhost, sizeof rhost, &rport) != 0 ||
      tp_cli_hostport(iso_listen, ihost, sizeof ihost, &iport) != 0) {
    fprintf(stderr, "turnpike sim: addresses must be HOST:PORT\n");
    return 2;
  }
  if (cfg) {
    int rc = tp_cli_ini_parse(cfg, ini_cb, NULL);
    if (rc != 0) {
      fprintf(stderr, "turnpike sim: %s: %s (line %d)\n", cfg, rc < 0 ? "cannot read" : "invalid", rc);
      return 2;
    }
  }
  if (!level)
    level = tp_config_get("log", "level");
  if (level) {
    int l = tp_log_level_parse(level);
    if (l < 0) {
      fprintf(stderr, "turnpike sim: unknown log level %s\n", level);
      return 2;
    }
    tp_log_threshold = l;
  }
  long holder = 0;
  int lock_fd = tp_cli_lock_dir(data, "sim.lock", false, &holder);
  if (lock_fd == -2) {
    fprintf(stderr, "turnpike sim: %s is in use by another turnpike sim (pid %ld)\n", data, holder);
    return 1;
  }
  if (lock_fd < 0) {
    fprintf(stderr, "turnpike sim: cannot lock %s: %s\n", data, strerror(errno));
    return 1;
  }
  tp_sim_procs_load();
  struct iso_pick pick = {""};
  tp_config_sections("sim.", pick_iso, &pick);
  if (!pick.name[0])
    snprintf(pick.name, sizeof pick.name, "iso");

  /* Signals are taken by sigwait below; every thread started after this
   * inherits the mask. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);

  /* Up to 8192 REST connections plus the ISO links and the journal. */
  if (tp_cli_raise_nofile(16384) < 8192 + 256)
    tp_log(TP_LOG_WARN, "open_files_limited", "{s:s}", "hint", "raise the hard limit (ulimit -Hn) for 8192 connections");
  int status = 1;
  if (tp_sim_journal_open(data) != 0 || tp_sim_state_load() != 0) {
    fprintf(stderr, "turnpike sim: cannot open the journal in %s\n", data);
    tp_sim_journal_close();
    return 1;
  }
  if (tp_sim_journal_start() != 0 || tp_sim_timer_start() != 0) {
    fprintf(stderr, "turnpike sim: cannot start threads\n");
    goto out;
  }
  uint16_t rbound = 0, ibound = 0;
  if (tp_sim_rest_start(rhost, rport, (unsigned)threads, &rbound) != 0) {
    tp_log(TP_LOG_ERROR, "sim_listen_failed", "{s:s}", "listen", listen);
    goto stop;
  }
  if (tp_sim_iso_start(ihost, iport, pick.name, &ibound) != 0) {
    tp_log(TP_LOG_ERROR, "sim_iso_listen_failed", "{s:s}", "listen", iso_listen);
    tp_sim_rest_quiesce();
    tp_sim_rest_stop();
    goto stop;
  }
  if (write_addr(data, rhost, rbound, ihost, ibound) != 0)
    tp_log(TP_LOG_WARN, "sim_addr_file", "{s:s}", "data", data);
  tp_log(TP_LOG_INFO, "sim_listening", "{s:s, s:i, s:s, s:i, s:s, s:s}", "rest_host", rhost, "rest_port",
         (int)rbound, "iso_host", ihost, "iso_port", (int)ibound, "iso_processor", pick.name, "data", data);

  int sig = 0;
  sigwait(&set, &sig);
  tp_log(TP_LOG_INFO, "sim_stopping", "{s:i}", "signal", sig);
  tp_sim_rest_quiesce();
  tp_sim_iso_stop();
  usleep(50000); /* handlers already past the stopping check finish submitting */
  status = 0;
stop:
  tp_sim_journal_stop(); /* commits and releases everything queued */
  tp_sim_timer_stop();   /* fires held answers now */
  tp_sim_rest_stop();
out:
  tp_sim_journal_stop();
  tp_sim_timer_stop();
  tp_sim_journal_close();
  tp_sim_state_free();
  tp_log(TP_LOG_INFO, "sim_stopped", NULL);
  return status;
}

/* Command-line helpers shared by every subcommand. */
#include "cli.h"
#include "util.h"

#include <ini.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <stdio.h>
#include <unistd.h>
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
  if (!colon || colon == s || !colon[1])
    return -1;
  const char *h = s;
  size_t n = (size_t)(colon - s);
  if (s[0] == '[') { /* [IPv6]:PORT */
    if (n < 3 || s[n - 1] != ']')
      return -1;
    h = s + 1;
    n -= 2;
  } else if (memchr(s, ':', n)) {
    return -1; /* an IPv6 address needs its brackets */
  }
  if (n >= hl || memchr(h, '[', n) || memchr(h, ']', n))
    return -1;
  /* digits only: strtol took "127.0.0.1: 80" (leading space) for port 80 */
  if (strspn(colon + 1, "0123456789") != strlen(colon + 1) || strlen(colon + 1) > 5)
    return -1;
  long p = strtol(colon + 1, NULL, 10);
  if (p > 65535)
    return -1;
  memcpy(host, h, n);
  host[n] = '\0';
  *port = (uint16_t)p;
  return 0;
}

void tp_cli_hostport_fmt(char *out, size_t n, const char *host, unsigned port)
{
  snprintf(out, n, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
}

int tp_cli_sockaddr(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
  if (strcmp(host, "localhost") == 0)
    host = "127.0.0.1";
  if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    *len = sizeof *v4;
    return 0;
  }
  if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    *len = sizeof *v6;
    return 0;
  }
  return -1;
}

long tp_cli_raise_nofile(long want)
{
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return -1;
  if (rl.rlim_cur != RLIM_INFINITY && (long)rl.rlim_cur < want) {
    rlim_t to = (rl.rlim_max == RLIM_INFINITY || (long)rl.rlim_max > want) ? (rlim_t)want : rl.rlim_max;
    struct rlimit nl = {to, rl.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &nl) == 0)
      rl.rlim_cur = to;
  }
  return rl.rlim_cur == RLIM_INFINITY ? want : (long)rl.rlim_cur;
}

int tp_cli_lock_dir(const char *dir, const char *name, bool on_dir, long *holder)
{
  *holder = 0;
  if (mkdir(dir, 0700) == 0)
    tp_fsync_dir_of(dir); /* the new directory's name is durable once its parent is synced */
  else if (errno != EEXIST)
    return -1;
  char path[1200];
  if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  /* The gateway's lock is on the directory itself: a lock file can be
   * deleted (it looks like a stale pid file), and a second server then
   * locked a new one and ran on the same store. The file only names the
   * holder's pid. (The simulator, which may share a directory with the
   * gateway, locks its own file: on_dir false.) */
  int fd = on_dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0)
    return -1;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    if (e == EWOULDBLOCK) {
      int pf = open(path, O_RDONLY | O_CLOEXEC);
      char buf[24] = "";
      ssize_t n = pf >= 0 ? pread(pf, buf, sizeof buf - 1, 0) : -1;
      if (n > 0) {
        buf[n] = '\0';
        *holder = strtol(buf, NULL, 10);
      }
      if (pf >= 0)
        close(pf);
    }
    close(fd);
    errno = e;
    return e == EWOULDBLOCK ? -2 : -1;
  }
  int pf = on_dir ? open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600) : dup(fd);
  /* The file too, as binaries from before session 26 lock it alone: an old
   * and a new serve must still exclude each other (an upgrade, a rollback).
   * Held until exit (pf stays open). */
  if (on_dir && pf >= 0 && flock(pf, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    char buf[24] = "";
    ssize_t n = pread(pf, buf, sizeof buf - 1, 0);
    if (n > 0) {
      buf[n] = '\0';
      *holder = strtol(buf, NULL, 10);
    }
    close(pf);
    close(fd);
    errno = e;
    return e == EWOULDBLOCK ? -2 : -1;
  }
  char pid[24];
  int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (pf < 0 || ftruncate(pf, 0) != 0 || pwrite(pf, pid, (size_t)n, 0) != n) {
    int e = errno;
    if (pf >= 0)
      close(pf);
    close(fd);
    errno = e;
    return -1;
  }
  if (!on_dir)
    close(pf);
  return fd;
}

char tp_cli_config_sha256[65];

int tp_cli_ini_parse(const char *path, int (*handler)(void *, const char *, const char *, const char *), void *user)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  struct stat st;
  if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    close(fd);
    return -1;
  }
  char *buf = malloc(TP_CLI_CONFIG_MAX + 1);
  if (!buf) {
    close(fd);
    return -1;
  }
  size_t len = 0;
  bool failed = false;
  for (;;) {
    ssize_t n = read(fd, buf + len, TP_CLI_CONFIG_MAX + 1 - len);
    if (n < 0 && errno == EINTR)
      continue;
    failed = n < 0;
    if (n <= 0)
      break;
    len += (size_t)n;
    if (len > TP_CLI_CONFIG_MAX)
      break;
  }
  close(fd);
  if (failed || len > TP_CLI_CONFIG_MAX || memchr(buf, '\0', len)) {
    free(buf); /* unreadable, too long (a device that never ends), or not text */
    return -1;
  }
  buf[len] = '\0';
  tp_sha256_hex(buf, len, tp_cli_config_sha256);
  int rc = ini_parse_string(buf, handler, user);
  free(buf);
  return rc;
}

const char *tp_cli_default_data(const char *conf)
{
  const char *env = getenv("TURNPIKE_SERVER_DATA");
  if (env && *env)
    return env;
  return conf && *conf ? conf : "./var";
}

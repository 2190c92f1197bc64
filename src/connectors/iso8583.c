/* ISO 8583 connector: one persistent TCP link to an acquirer host, driven by
 * its own thread with poll(2). Sign-on after connect, 0800 echo heartbeat,
 * reconnect with backoff, many requests in flight matched by STAN, and
 * reversal (0400, then 0401 repeats) of every request whose outcome is
 * unknown. docs/iso8583.md describes the messages. */
#include "connectors/connector.h"
#include "core/iso8583.h"
#include "core/router.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ISO_OUTBUF_MAX (4u << 20)    /* bytes queued for the socket */
#define ISO_INFLIGHT_MAX 100000      /* requests in flight per link (STANs are 6 digits) */
#define ISO_BUCKETS 16384            /* STAN hash table */
#define ISO_LATE_RING 4096           /* timed-out STANs remembered to recognise late answers */
#define ISO_REVERSED_RING 1024       /* RRNs whose reversal the host acknowledged with no caller left */
#define ISO_BACKOFF_MIN_MS 50
#define ISO_BACKOFF_MAX_MS 5000
#define ISO_RESEND_MAX_MS 600000     /* a reversal waits this long for the link, then gives up */
#define ISO_STAN_MAX 999999

enum link_state { LINK_DOWN, LINK_CONNECTING, LINK_UP };

/* One STAN sequence per terminal id (field 41), shared by every link that
 * uses it: a host that tells duplicates by terminal, STAN and date would
 * refuse (94) the second of two links' messages with one STAN. Drawn from
 * by the link threads and by tp_iso8583_reserve (any thread). */
struct stan_seq {
  struct stan_seq *next;
  char tid[9];
  int refs;
  _Atomic uint64_t n;
  /* Counter values below hw are on disk (stan_dir): a restart starts at
   * hw, past every STAN this process could have sent. */
  _Atomic uint64_t hw;
  pthread_mutex_t hw_mu;
  int64_t hw_failed_ms; /* under hw_mu: the last failed write (retried 100 ms on) */
};
static pthread_mutex_t seqs_mu = PTHREAD_MUTEX_INITIALIZER;
static struct stan_seq *seqs;
static char stan_dir[1024]; /* the data directory; "" (tests): no file */
#define STAN_BLOCK 20000    /* STANs taken on disk at a time */

void tp_iso8583_state_dir(const char *dir)
{
  tp_scopy(stan_dir, sizeof stan_dir, dir ? dir : "");
}

/* DIR/iso-stan-HEX(terminal id): the counter a restart starts from. */
static void stan_path(const struct stan_seq *s, char *out, size_t cap)
{
  char hex[2 * sizeof s->tid + 1] = "";
  for (size_t i = 0; s->tid[i] && i < sizeof s->tid; i++)
    snprintf(hex + 2 * i, 3, "%02x", (unsigned char)s->tid[i]);
  snprintf(out, cap, "%s/iso-stan-%s", stan_dir, hex);
}

static bool stan_load(const struct stan_seq *s, uint64_t *v)
{
  char path[1200], buf[32];
  stan_path(s, path, sizeof path);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOENT)
      tp_log(TP_LOG_WARN, "iso_stan_mark_unreadable", "{s:s, s:s}", "terminal_id", s->tid, "error", strerror(errno));
    return false;
  }
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  char *end = buf;
  unsigned long long x = 0;
  if (n > 0) {
    buf[n] = '\0';
    errno = 0;
    x = strtoull(buf, &end, 10);
  }
  if (n <= 0 || errno || end == buf || (*end && *end != '\n')) {
    tp_log(TP_LOG_WARN, "iso_stan_mark_unreadable", "{s:s, s:s}", "terminal_id", s->tid, "error",
           "not a number: the sequence starts from the clock");
    return false;
  }
  *v = x;
  return true;
}

/* Write hw durably (a temporary file, fsync, rename, the directory). */
static int stan_store(const struct stan_seq *s, uint64_t hw)
{
  char path[1200], tmp[1210], buf[32];
  stan_path(s, path, sizeof path);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int len = snprintf(buf, sizeof buf, "%llu\n", (unsigned long long)hw);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return -1;
  bool ok = write(fd, buf, (size_t)len) == len && fsync(fd) == 0;
  ok = close(fd) == 0 && ok;
  ok = ok && rename(tmp, path) == 0 && tp_fsync_dir_of(path) == 0;
  if (!ok) {
    int e = errno; /* the cause, not unlink's */
    unlink(tmp);
    errno = e;
  }
  return ok ? 0 : -1;
}

/* Move the mark on disk past counter value v before v is used. A failed
 * write (a full disk) leaves the mark where it was, so a later draw tries
 * again (every 100 ms at most, logged once a streak): taken as written, the
 * next 20,000 STANs went out with nothing on disk, and a restart reused
 * them. Meanwhile the STAN is still drawn: refusing it would fail payments
 * that may yet commit. */
static void stan_reach(struct stan_seq *s, uint64_t v)
{
  if (!stan_dir[0] || v < atomic_load(&s->hw))
    return;
  pthread_mutex_lock(&s->hw_mu);
  uint64_t hw = atomic_load(&s->hw);
  int64_t now = tp_mono_ms();
  if (v >= hw && (!s->hw_failed_ms || now - s->hw_failed_ms >= 100)) {
    uint64_t next = v + STAN_BLOCK;
    if (stan_store(s, next) != 0) {
      if (!s->hw_failed_ms)
        tp_log(TP_LOG_ERROR, "iso_stan_mark_failed", "{s:s, s:s}", "terminal_id", s->tid, "error",
               strerror(errno));
      s->hw_failed_ms = now;
    } else {
      if (s->hw_failed_ms)
        tp_log(TP_LOG_INFO, "iso_stan_mark_written", "{s:s}", "terminal_id", s->tid);
      s->hw_failed_ms = 0;
      atomic_store(&s->hw, next);
    }
  }
  pthread_mutex_unlock(&s->hw_mu);
}

static struct stan_seq *seq_get(const char *tid)
{
  pthread_mutex_lock(&seqs_mu);
  struct stan_seq *s = seqs;
  while (s && strcmp(s->tid, tid) != 0)
    s = s->next;
  if (!s && (s = calloc(1, sizeof *s)) != NULL) {
    tp_scopy(s->tid, sizeof s->tid, tid);
    /* Not 1 at every start: a host that tells duplicates by terminal, STAN
     * and date would refuse the first messages after a restart. From the
     * mark on disk, past every STAN the last process could have sent (it
     * is moved STAN_BLOCK ahead before a STAN past it is used); without
     * one (a new data directory, the tests), eleven STANs a second from
     * midnight UTC. */
    uint64_t start = 0;
    if (!stan_dir[0] || !stan_load(s, &start))
      start = (uint64_t)(time(NULL) % 86400) * 11 % ISO_STAN_MAX;
    atomic_init(&s->n, start);
    atomic_init(&s->hw, start);
    pthread_mutex_init(&s->hw_mu, NULL);
    s->next = seqs;
    seqs = s;
  }
  if (s)
    s->refs++;
  pthread_mutex_unlock(&seqs_mu);
  return s;
}

static void seq_put(struct stan_seq *s)
{
  pthread_mutex_lock(&seqs_mu);
  if (--s->refs == 0) {
    struct stan_seq **pp = &seqs;
    while (*pp != s)
      pp = &(*pp)->next;
    *pp = s->next;
    /* A clean stop writes where the sequence is: the next start goes on
     * from there, not a block on (each start cost 20,000 STANs, and fifty
     * in a day wrapped the million onto that day's STANs). */
    if (stan_dir[0] && stan_store(s, atomic_load(&s->n)) != 0)
      tp_log(TP_LOG_WARN, "iso_stan_mark_failed", "{s:s, s:s}", "terminal_id", s->tid, "error", strerror(errno));
    pthread_mutex_destroy(&s->hw_mu);
    free(s);
  }
  pthread_mutex_unlock(&seqs_mu);
}

/* The terminal's next STAN, 1..999999, wrapping. */
static uint32_t seq_next(struct stan_seq *s)
{
  uint64_t v = atomic_fetch_add_explicit(&s->n, 1, memory_order_relaxed);
  stan_reach(s, v);
  return (uint32_t)(v % ISO_STAN_MAX + 1);
}

/* What a pending message is. */
enum pend_type {
  PT_CALL,     /* 0100 / 0200 / 0220 from a caller */
  PT_REVERSAL, /* 0400 / 0401: a void, a status query, or reversing a timed-out call */
  PT_SIGNON,   /* 0800 70=001 */
  PT_ECHO,     /* 0800 70=301 */
};

struct pend {
  struct pend *hnext;            /* STAN table chain */
  struct pend *prev, *next;      /* wire list (by deadline) or resend list */
  int where;                     /* 0 none, 1 wire list, 2 resend list */
  enum pend_type type;
  uint32_t stan;                 /* 0: none yet */
  char mti[5];                   /* last MTI sent */
  uint64_t start_off;            /* link byte offset where it was queued */
  int64_t deadline;              /* mono ms: answer due / caller to be told */
  int64_t created;
  int tries;                     /* reversal messages sent */
  struct tp_proc_call *c;        /* caller still waiting, or NULL */
  int64_t caller_by;             /* mono ms: the caller is told by then, whatever resends the link makes */
  bool report_on_send;           /* timed-out call: report once its reversal is out */
  bool believe_25;               /* a 25 to this reversal's first send is final (on_reversal_answer) */
  char report_decline[24];       /* ... as this decline (reversing), not processor_timeout */
  enum tp_proc_kind kind;
  bool capture;
  char rrn[13], orig_rrn[13];
  char proc_code[7];
  char amount[13];
  char cur[4];
  char pan[20];                  /* card data: wiped when freed */
  char exp[5];                   /* YYMM */
  char orig_mti[5], orig_f7[11];
  uint32_t orig_stan;
  /* A call's STAN and field 7 fixed before its write-ahead
   * (tp_iso8583_reserve): a reversal after a crash names them */
  uint32_t want_stan;
  char want_f7[11];
};

/* A call given up on and reversed, kept with its STAN in the late ring: an
 * approval that arrives after its reversal was answered 25 (the host had
 * not seen the call yet) stands at the host, and is reversed again from
 * this. No card data: a reversal is found by fields 37 and 90. */
struct late_call {
  bool is_call; /* false: the STAN was a reversal's own (a repeat's late 0410), or it was reversed again */
  enum tp_proc_kind kind;
  char ref[64]; /* the caller's reference (its attempt's), "" when none was waiting */
  char rrn[13], proc_code[7], amount[13], cur[4], mti[5], f7[11];
};

struct iso_link {
  char name[64];
  char host[256];
  int port, timeout_ms, echo_ms, rev_tries;
  char tid[9], mid[16];
  char labels[128];
  pthread_t thread;
  int efd;

  pthread_mutex_t mu; /* guards the fields below it up to `stop` */
  struct pend *inq_head, *inq_tail;
  size_t inq_len;
  bool stop;
  /* stats, written by the link thread under mu */
  enum link_state st_state;
  bool st_signed_on;
  size_t st_in_flight, st_reversals;
  int64_t st_last_echo_ms;
  uint64_t st_reconnects, st_bad_messages;
  uint64_t reconnects, bad_messages; /* link thread's own counts, copied by publish_stats */

  /* link thread only */
  int fd;
  enum link_state state;
  bool signed_on;
  int64_t reconnect_at, backoff_ms, next_echo, echo_sent_at;
  int64_t in_since; /* when the frame now partly read began (0: none) */
  uint8_t *out;
  size_t out_len, out_cap;
  uint64_t out_queued, out_written; /* cumulative byte offsets */
  uint8_t in[2 + TP_ISO_MAX_MSG];
  size_t in_len;
  struct pend *table[ISO_BUCKETS];
  size_t in_flight, reversals;
  struct pend *wire_head, *wire_tail;
  struct pend *resend_head, *resend_tail;
  struct stan_seq *seq;
  uint32_t late[ISO_LATE_RING];
  struct late_call late_call[ISO_LATE_RING]; /* for late[i]: the call it was, to reverse again */
  size_t late_pos;
  uint8_t late_bits[ISO_STAN_MAX / 8 + 1]; /* the STANs in late[], for stan_assign and late_stan */
  char reversed[ISO_REVERSED_RING][13];      /* reversed_add, reversed_known */
  size_t reversed_pos;
};

/* ---- small helpers ---------------------------------------------------------- */

static void pend_free(struct pend *p)
{
  explicit_bzero(p, sizeof *p);
  free(p);
}

static void report(struct iso_link *l, struct pend *p, enum tp_proc_outcome o, const char *code)
{
  struct tp_proc_call *c = p->c;
  if (!c)
    return;
  p->c = NULL;
  c->outcome = o;
  tp_scopy(c->decline_code, sizeof c->decline_code, code ? code : "");
  if (o == TP_OUT_ERROR)
    tp_metric_inc("turnpike_iso_errors_total", l->labels, 1);
  c->done(c);
}

static struct pend **bucket(struct iso_link *l, uint32_t stan) { return &l->table[stan % ISO_BUCKETS]; }

static struct pend *table_find(struct iso_link *l, uint32_t stan)
{
  for (struct pend *p = *bucket(l, stan); p; p = p->hnext)
    if (p->stan == stan)
      return p;
  return NULL;
}

static void table_del(struct iso_link *l, struct pend *p)
{
  if (!p->stan)
    return;
  for (struct pend **pp = bucket(l, p->stan); *pp; pp = &(*pp)->hnext)
    if (*pp == p) {
      *pp = p->hnext;
      break;
    }
  p->stan = 0;
  l->in_flight--;
}

/* The STANs of calls given up on (reversed), whose answers may still come:
 * the last ISO_LATE_RING of them, with a bit each for a quick test. A STAN
 * leaves the set when the ring overwrites it (unless it is there twice). */
static bool late_stan(const struct iso_link *l, uint32_t stan)
{
  return stan != 0 && stan <= ISO_STAN_MAX && (l->late_bits[stan / 8] & (1u << (stan % 8)));
}

static void late_add(struct iso_link *l, uint32_t stan, const struct pend *p)
{
  struct late_call *lc = &l->late_call[l->late_pos % ISO_LATE_RING];
  memset(lc, 0, sizeof *lc);
  if (p->type == PT_CALL) {
    lc->is_call = true;
    lc->kind = p->kind;
    if (p->c)
      tp_scopy(lc->ref, sizeof lc->ref, p->c->ref);
    tp_scopy(lc->rrn, sizeof lc->rrn, p->rrn);
    tp_scopy(lc->proc_code, sizeof lc->proc_code, p->proc_code);
    tp_scopy(lc->amount, sizeof lc->amount, p->amount);
    tp_scopy(lc->cur, sizeof lc->cur, p->cur);
    tp_scopy(lc->mti, sizeof lc->mti, p->mti);
    tp_scopy(lc->f7, sizeof lc->f7, p->orig_f7);
  }
  uint32_t *slot = &l->late[l->late_pos++ % ISO_LATE_RING];
  uint32_t old = *slot;
  *slot = stan;
  if (old && old != stan) {
    bool again = false;
    for (size_t i = 0; i < ISO_LATE_RING && !again; i++)
      again = l->late[i] == old;
    if (!again)
      l->late_bits[old / 8] &= (uint8_t) ~(1u << (old % 8));
  }
  if (stan <= ISO_STAN_MAX)
    l->late_bits[stan / 8] |= (uint8_t)(1u << (stan % 8));
}

/* RRNs whose reversal the host acknowledged (00, or 25: nothing stands)
 * after its caller had been told the outcome was unknown: a host slower
 * than timeout_ms answers every reversal after the caller's deadline, and
 * the acknowledgement, which only the link saw, was dropped; recovery's
 * next reversal was cut off the same way, for as long as the host stayed
 * slow, and the attempt stayed sent or reversal_pending with the money
 * back at the host. The next void or status call for such an RRN is
 * answered from here at once. An RRN names one call (each call has its own
 * reference), so an acknowledgement stays true. */
static void reversed_add(struct iso_link *l, const char *rrn)
{
  tp_scopy(l->reversed[l->reversed_pos++ % ISO_REVERSED_RING], sizeof l->reversed[0], rrn);
}

static bool reversed_known(const struct iso_link *l, const char *rrn)
{
  for (size_t i = 0; i < ISO_REVERSED_RING; i++)
    if (l->reversed[i][0] && strcmp(l->reversed[i], rrn) == 0)
      return true;
  return false;
}

/* rrn stands at the host after all (a late approval): no longer known as
 * reversed, so recovery's reversal of it goes out again. */
static void reversed_forget(struct iso_link *l, const char *rrn)
{
  for (size_t i = 0; i < ISO_REVERSED_RING; i++)
    if (l->reversed[i][0] && strcmp(l->reversed[i], rrn) == 0)
      l->reversed[i][0] = '\0';
}

/* A STAN unused by any pending message: the one reserved for p when it is
 * free, else the terminal's next free one. */
static int stan_assign(struct iso_link *l, struct pend *p)
{
  if (l->in_flight >= ISO_INFLIGHT_MAX)
    return -1;
  uint32_t want = p->want_stan;
  p->want_stan = 0;
  if (want && (table_find(l, want) || late_stan(l, want))) {
    /* Only past a wrap of the million STANs. The link's answer or
     * reversal gives the payment the STAN used instead. */
    tp_log(TP_LOG_WARN, "iso_stan_reassigned", "{s:s, s:i}", "processor", l->name, "stan", (int)want);
    want = 0;
    p->want_f7[0] = '\0';
  }
  for (;;) {
    uint32_t s = want ? want : seq_next(l->seq);
    want = 0;
    /* Past a wrap, a timed-out call's STAN may still get a late answer:
     * not given to a new call while it is remembered. */
    if (!table_find(l, s) && !late_stan(l, s)) {
      p->stan = s;
      p->hnext = *bucket(l, s);
      *bucket(l, s) = p;
      l->in_flight++;
      return 0;
    }
  }
}

static void list_del(struct iso_link *l, struct pend *p)
{
  struct pend **head = p->where == 1 ? &l->wire_head : &l->resend_head;
  struct pend **tail = p->where == 1 ? &l->wire_tail : &l->resend_tail;
  if (!p->where)
    return;
  if (p->prev)
    p->prev->next = p->next;
  else
    *head = p->next;
  if (p->next)
    p->next->prev = p->prev;
  else
    *tail = p->prev;
  p->prev = p->next = NULL;
  p->where = 0;
}

static void list_add(struct iso_link *l, struct pend *p, int where)
{
  list_del(l, p);
  struct pend **head = where == 1 ? &l->wire_head : &l->resend_head;
  struct pend **tail = where == 1 ? &l->wire_tail : &l->resend_tail;
  p->prev = *tail;
  p->next = NULL;
  if (*tail)
    (*tail)->next = p;
  else
    *head = p;
  *tail = p;
  p->where = where;
}

static void pend_drop(struct iso_link *l, struct pend *p)
{
  list_del(l, p);
  table_del(l, p);
  if (p->type == PT_REVERSAL)
    l->reversals--;
  pend_free(p);
}

static void publish_stats(struct iso_link *l)
{
  pthread_mutex_lock(&l->mu);
  l->st_state = l->state;
  l->st_signed_on = l->signed_on;
  l->st_in_flight = l->in_flight;
  l->st_reversals = l->reversals;
  l->st_reconnects = l->reconnects;
  l->st_bad_messages = l->bad_messages;
  pthread_mutex_unlock(&l->mu);
}

/* ---- building messages ------------------------------------------------------ */

/* Field 7, transmission date and time (UTC, MMDDhhmmss), now. */
static void utc_f7(char f7[11])
{
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  snprintf(f7, 11, "%02u%02u%02u%02u%02u", (unsigned)(tm.tm_mon + 1) % 100u, (unsigned)tm.tm_mday % 100u,
           (unsigned)tm.tm_hour % 100u, (unsigned)tm.tm_min % 100u, (unsigned)tm.tm_sec % 100u);
}

static void utc_fields(struct tp_iso_msg *m, char f7[11])
{
  utc_f7(f7);
  /* fields 12 and 13 are the same instant: hhmmss and MMDD of field 7 */
  tp_iso_set(m, 7, f7);
  tp_iso_set(m, 12, (char[7]){f7[4], f7[5], f7[6], f7[7], f7[8], f7[9], 0});
  tp_iso_set(m, 13, (char[5]){f7[0], f7[1], f7[2], f7[3], 0});
}

/* An authorization's approval carries its authorization code (field 38,
 * mandatory when approved): one without it, or with spaces only, is no
 * approval we can book or later void by, and is treated as an unusable
 * answer (reversed). Captures and refunds need none. */
static bool approval_without_code(const struct pend *p, const struct tp_iso_msg *m, const char *f39)
{
  if (p->kind != TP_PROC_AUTHORIZE || !tp_iso_f39_approved(f39) || strcmp(f39, "10") == 0)
    return false; /* (a partial approval is reversed whatever it carries) */
  const char *f38 = tp_iso_get(m, 38);
  return !f38 || strspn(f38, " ") == strlen(f38);
}

/* Field 41 of an answer, when there, is the link's terminal (fixed ans 8:
 * compared without the spaces that pad it). */
static bool same_terminal(const struct iso_link *l, const struct tp_iso_msg *m)
{
  const char *f41 = tp_iso_get(m, 41);
  if (!f41)
    return true;
  size_t n = strlen(f41), t = strlen(l->tid);
  while (n > 0 && f41[n - 1] == ' ')
    n--;
  while (t > 0 && l->tid[t - 1] == ' ')
    t--;
  return n == t && memcmp(f41, l->tid, n) == 0;
}

/* Field 3 of an answer echoes the request's: a refund (200000) answered
 * 000000 is about a purchase, not it (it was booked as a refund done). An
 * answer without field 3 is taken as the echo, as without field 41. */
static bool same_processing_code(const struct pend *p, const struct tp_iso_msg *m)
{
  const char *f3 = tp_iso_get(m, 3);
  return !f3 || !p->proc_code[0] || strcmp(f3, p->proc_code) == 0;
}

/* The MTI of a call: a capture advice, a sale or refund (financial), or an
 * authorization. */
static const char *call_mti(enum tp_proc_kind kind, bool capture)
{
  return kind == TP_PROC_CAPTURE ? "0220" : kind == TP_PROC_REFUND || capture ? "0200" : "0100";
}

/* Build p's next message into m; 0 or -1 when a field does not fit. */
static int build(struct iso_link *l, struct pend *p, struct tp_iso_msg *m)
{
  char stan[7], f7[11];
  snprintf(stan, sizeof stan, "%06u", p->stan % 1000000u);
  int bad = 0;
  if (p->type == PT_SIGNON || p->type == PT_ECHO) {
    tp_iso_init(m, "0800");
    utc_fields(m, f7);
    tp_iso_set(m, 12, NULL);
    tp_iso_set(m, 13, NULL);
    bad |= tp_iso_set(m, 11, stan);
    bad |= tp_iso_set(m, 70, p->type == PT_SIGNON ? "001" : "301");
    snprintf(p->mti, sizeof p->mti, "0800");
    return bad ? -1 : 0;
  }
  if (p->type == PT_REVERSAL) {
    tp_scopy(p->mti, sizeof p->mti, p->tries == 0 ? "0400" : "0401");
    tp_iso_init(m, p->mti);
    utc_fields(m, f7);
    if (p->pan[0])
      bad |= tp_iso_set(m, 2, p->pan);
    bad |= tp_iso_set(m, 3, p->proc_code);
    bad |= tp_iso_set(m, 4, p->amount);
    bad |= tp_iso_set(m, 37, p->rrn);
    if (p->cur[0])
      bad |= tp_iso_set(m, 49, p->cur);
    char f90[43];
    snprintf(f90, sizeof f90, "%.4s%06u%.10s%022d", p->orig_mti, p->orig_stan % 1000000u,
             p->orig_f7[0] ? p->orig_f7 : "0000000000", 0);
    bad |= tp_iso_set(m, 90, f90);
  } else {
    const char *mti = call_mti(p->kind, p->capture);
    tp_scopy(p->mti, sizeof p->mti, mti);
    tp_iso_init(m, mti);
    utc_fields(m, p->orig_f7);
    if (p->want_f7[0]) { /* as the write-ahead recorded it */
      bad |= tp_iso_set(m, 7, p->want_f7);
      tp_scopy(p->orig_f7, sizeof p->orig_f7, p->want_f7);
    }
    if (p->pan[0])
      bad |= tp_iso_set(m, 2, p->pan);
    bad |= tp_iso_set(m, 3, p->proc_code);
    bad |= tp_iso_set(m, 4, p->amount);
    if (p->kind == TP_PROC_AUTHORIZE) {
      if (p->exp[0])
        bad |= tp_iso_set(m, 14, p->exp);
      bad |= tp_iso_set(m, 18, "5999"); /* MCC: miscellaneous retail */
      bad |= tp_iso_set(m, 22, "010");  /* PAN keyed, no PIN */
      bad |= tp_iso_set(m, 25, "59");   /* e-commerce */
    } else {
      bad |= tp_iso_set(m, 48, p->orig_rrn);
    }
    bad |= tp_iso_set(m, 37, p->rrn);
    bad |= tp_iso_set(m, 49, p->cur);
  }
  bad |= tp_iso_set(m, 11, stan);
  bad |= tp_iso_set(m, 41, l->tid);
  bad |= tp_iso_set(m, 42, l->mid);
  return bad ? -1 : 0;
}

/* ---- the socket --------------------------------------------------------------- */

static void flush_out(struct iso_link *l)
{
  while (l->state == LINK_UP && l->out_len > 0) {
    ssize_t n = send(l->fd, l->out, l->out_len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return; /* EAGAIN: poll for POLLOUT; errors show up on the next read */
    }
    /* Wipe what went out: it may hold a PAN. */
    memmove(l->out, l->out + n, l->out_len - (size_t)n);
    l->out_len -= (size_t)n;
    explicit_bzero(l->out + l->out_len, (size_t)n);
    l->out_written += (uint64_t)n;
  }
}

/* Queue p's next message on the link and wait for its answer. */
static int send_pend(struct iso_link *l, struct pend *p, int64_t now)
{
  if (!p->stan && stan_assign(l, p) != 0)
    return -1;
  struct tp_iso_msg m;
  uint8_t buf[2 + TP_ISO_MAX_MSG];
  int n = -1;
  if (build(l, p, &m) == 0)
    n = tp_iso_frame(&m, buf, sizeof buf);
  tp_iso_free(&m);
  if (n < 0 || l->out_len + (size_t)n > ISO_OUTBUF_MAX) {
    explicit_bzero(buf, sizeof buf);
    return -1;
  }
  if (l->out_len + (size_t)n > l->out_cap) {
    size_t cap = l->out_cap ? l->out_cap : 65536;
    while (cap < l->out_len + (size_t)n)
      cap *= 2;
    uint8_t *o = malloc(cap);
    if (!o) {
      explicit_bzero(buf, (size_t)n);
      return -1;
    }
    if (l->out) {
      memcpy(o, l->out, l->out_len);
      explicit_bzero(l->out, l->out_len);
      free(l->out);
    }
    l->out = o;
    l->out_cap = cap;
  }
  memcpy(l->out + l->out_len, buf, (size_t)n);
  explicit_bzero(buf, (size_t)n);
  p->start_off = l->out_queued;
  l->out_len += (size_t)n;
  l->out_queued += (uint64_t)n;
  if (p->type == PT_REVERSAL)
    p->tries++;
  /* Every message waits timeout_ms, so the wire list stays in deadline order. */
  p->deadline = now + l->timeout_ms;
  list_add(l, p, 1);
  flush_out(l);
  if (p->report_on_send) {
    /* The reversal is on its way: the caller may cascade elsewhere, or,
     * for a partial approval, has the issuer's answer. */
    p->report_on_send = false;
    if (p->report_decline[0] && p->c) {
      p->c->reversing = true;
      report(l, p, TP_OUT_DECLINED, p->report_decline);
    } else
      report(l, p, TP_OUT_ERROR, "processor_timeout");
  }
  return 0;
}

static void link_fail(struct iso_link *l, const char *why, int64_t now);

/* The outcome of a call is unknown (timeout, unanswerable reply, link lost
 * after sending): turn it into a reversal of itself. */
static void to_reversal(struct iso_link *l, struct pend *p, int64_t now)
{
  list_del(l, p);
  p->orig_stan = p->stan;
  if (p->stan) {
    late_add(l, p->stan, p);
    table_del(l, p);
  }
  p->type = PT_REVERSAL;
  l->reversals++;
  tp_scopy(p->orig_mti, sizeof p->orig_mti, p->mti);
  p->tries = 0;
  p->report_on_send = p->c != NULL;
  /* The caller keeps what field 90 names (the attempt's orig_data), for
   * recovery to send the same reversal if this link's repeats give up. */
  if (p->c)
    snprintf(p->c->orig_data, sizeof p->c->orig_data, "%.4s%06u%.10s", p->orig_mti, p->orig_stan % 1000000u,
             p->orig_f7[0] ? p->orig_f7 : "0000000000");
  tp_metric_inc("turnpike_iso_reversals_total", l->labels, 1);
  tp_log(TP_LOG_WARN, "iso_reversing", "{s:s, s:s, s:s, s:i}", "processor", l->name, "mti", p->orig_mti, "rrn",
         p->rrn, "stan", (int)p->orig_stan);
  if (l->signed_on && send_pend(l, p, now) == 0)
    return;
  list_add(l, p, 2); /* sent when the link is back; the caller is told at its deadline */
}

static void set_state(struct iso_link *l, enum link_state s)
{
  l->state = s;
  tp_metric_set("turnpike_iso_link_up", l->labels, s == LINK_UP && l->signed_on);
}

static void start_connect(struct iso_link *l, int64_t now)
{
  char port[16];
  snprintf(port, sizeof port, "%d", l->port);
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
  int rc = getaddrinfo(l->host, port, &hints, &ai);
  if (rc != 0 || !ai) {
    tp_log(TP_LOG_ERROR, "iso_resolve_failed", "{s:s, s:s}", "processor", l->name, "error", gai_strerror(rc));
    l->reconnect_at = now + l->backoff_ms;
    return;
  }
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    freeaddrinfo(ai);
    l->reconnect_at = now + l->backoff_ms;
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  if (rc != 0 && errno != EINPROGRESS) {
    close(fd);
    l->fd = -1;
    link_fail(l, "connect failed", now);
    return;
  }
  l->fd = fd;
  set_state(l, LINK_CONNECTING);
  l->echo_sent_at = now; /* bounds the connect itself by timeout_ms */
}

/* Connected: sign on. Calls wait for the 0810 (no new calls are accepted
 * before it). */
static void on_connected(struct iso_link *l, int64_t now)
{
  set_state(l, LINK_UP);
  l->in_len = 0;
  struct pend *p = calloc(1, sizeof *p);
  if (p)
    p->type = PT_SIGNON;
  if (!p || send_pend(l, p, now) != 0) {
    if (p)
      pend_drop(l, p);
    link_fail(l, "sign-on could not be queued", now);
    return;
  }
  tp_log(TP_LOG_INFO, "iso_connected", "{s:s, s:s, s:i}", "processor", l->name, "host", l->host, "port", l->port);
}

static void link_fail(struct iso_link *l, const char *why, int64_t now)
{
  if (l->fd >= 0) {
    close(l->fd);
    l->fd = -1;
  }
  bool was_up = l->signed_on;
  l->signed_on = false;
  set_state(l, LINK_DOWN);
  l->reconnect_at = now + l->backoff_ms;
  l->backoff_ms = l->backoff_ms * 2 > ISO_BACKOFF_MAX_MS ? ISO_BACKOFF_MAX_MS : l->backoff_ms * 2;
  l->reconnects++;
  tp_log(was_up ? TP_LOG_ERROR : TP_LOG_WARN, "iso_link_down", "{s:s, s:s, s:I}", "processor", l->name, "reason",
         why, "retry_ms", (json_int_t)(l->reconnect_at - now));
  /* Messages on the wire: never written means known not sent. */
  struct pend *p = l->wire_head;
  while (p) {
    struct pend *next = p->next;
    bool unsent = p->start_off >= l->out_written;
    if (p->type == PT_SIGNON || p->type == PT_ECHO) {
      pend_drop(l, p);
    } else if (p->type == PT_CALL && unsent) {
      report(l, p, TP_OUT_ERROR, "processor_link_down");
      pend_drop(l, p);
    } else if (p->type == PT_CALL) {
      to_reversal(l, p, now);
    } else {
      if (unsent && p->tries > 0)
        p->tries--;
      list_add(l, p, 2);
    }
    p = next;
  }
  if (l->out) {
    explicit_bzero(l->out, l->out_len);
  }
  l->out_written = l->out_queued;
  l->out_len = 0;
  explicit_bzero(l->in, l->in_len);
  l->in_len = 0;
  l->in_since = 0;
  publish_stats(l);
}

/* ---- answers ---------------------------------------------------------------- */

/* Answer a request (xx0) or advice (xx2) the host started: every one
 * expects its response (xx1 / xx3), or the host repeats it or drops the
 * link. Network management (08x0/08x2) by what field 70 asks; anything
 * else (a 0200 or 0420 from the host: this terminal takes no such
 * messages) 12, invalid transaction (review, session 41: a 0820 cutover
 * advice got nothing). */
static void answer_host_request(struct iso_link *l, const struct tp_iso_msg *q, int64_t now)
{
  struct tp_iso_msg m;
  uint8_t buf[256];
  char mti[5];
  memcpy(mti, q->mti, 5);
  mti[2] = (char)(mti[2] + 1);
  mti[3] = '0'; /* origin: ours, the acquirer's */
  tp_iso_init(&m, mti);
  int bad = 0;
  for (int f = 3; f <= 70; f++)
    if ((f == 3 || f == 4 || f == 7 || f == 11 || f == 37 || f == 41 || f == 49 || f == 70) && tp_iso_get(q, f))
      bad |= tp_iso_set(&m, f, tp_iso_get(q, f));
  /* Sign-on, sign-off, cutover and echo are answered 00; anything else
   * (a key exchange, 161/162 ...) is a function this connector does not
   * perform: 12, invalid transaction (a 00 claimed a key change that never
   * happened); no field 70 at all, 30, format error. */
  const char *f70 = tp_iso_get(q, 70);
  const char *f39 = q->mti[1] != '8' ? "12"
                    : !f70 ? "30"
                    : (strcmp(f70, "001") == 0 || strcmp(f70, "002") == 0 || strcmp(f70, "201") == 0 ||
                       strcmp(f70, "301") == 0)
                        ? "00"
                        : "12";
  bad |= tp_iso_set(&m, 39, f39);
  int n = bad ? -1 : tp_iso_frame(&m, buf, sizeof buf);
  tp_iso_free(&m);
  if (n > 0 && l->out_len + (size_t)n <= l->out_cap) {
    memcpy(l->out + l->out_len, buf, (size_t)n);
    l->out_len += (size_t)n;
    l->out_queued += (uint64_t)n;
    flush_out(l);
  }
  (void)now;
}


static void on_call_answer(struct iso_link *l, struct pend *p, const struct tp_iso_msg *m, int64_t now)
{
  const char *f39 = tp_iso_get(m, 39);
  const char *f37 = tp_iso_get(m, 37);
  /* We cannot tell what happened: treat like no answer (a reversal). A
   * garbled field 39 is no decline: the host may have approved. "09",
   * request in progress, says the issuer has not finished with it. */
  /* Fields 37 and 41 echo the request's (ISO 8583:1987): an answer
   * without its RRN, or naming another terminal, is about something else
   * or cannot be tied to this request. */
  const char *bad = !f39                                  ? "field 39 missing"
                    : !tp_iso_f39_well_formed(f39)        ? "field 39 malformed"
                    : !f37                                ? "field 37 missing"
                    : strcmp(f37, p->rrn) != 0            ? "field 37 does not match the request"
                    : !same_terminal(l, m)                ? "field 41 names another terminal"
                    : !same_processing_code(p, m)         ? "field 3 does not match the request"
                    : strcmp(f39, "09") == 0              ? "field 39 09: request in progress"
                    : approval_without_code(p, m, f39)    ? "field 38 missing on an approval"
                                                          : NULL;
  if (bad) {
    tp_log(TP_LOG_ERROR, "iso_bad_answer", "{s:s, s:s, s:s}", "processor", l->name, "mti", m->mti, "reason", bad);
    l->bad_messages++;
    to_reversal(l, p, now);
    return;
  }
  if (strcmp(f39, "10") == 0 || strcmp(f39, "08") == 0 || strcmp(f39, "32") == 0) {
    /* A partial approval (10): we never ask for one and cannot charge less
     * than requested. Honour with identification (08): the issuer holds the
     * amount on condition of an identity check that a card-not-present
     * payment cannot make. Either way the hold is given back (a durable
     * reversal, as after a timeout). An authorization partially approved
     * is the issuer's answer that the funds do not cover it: reported as
     * the hard decline insufficient_funds (Stripe's card_error), its
     * reversal owed; it was a timeout, retried and cascaded, the merchant
     * told 502 after another hold on the same account. Completed
     * partially (32): part of the transaction stands at the host while a
     * decline would say none does; reversed the same way, reported as a
     * decline (generic_decline) so that nothing is tried elsewhere before
     * the merchant decides (it was a plain decline, with no reversal). */
    tp_log(TP_LOG_WARN, "iso_conditional_approval_reversed", "{s:s, s:s, s:s}", "processor", l->name, "rrn", p->rrn,
           "code", f39);
    if (f39[1] == '0' && p->kind == TP_PROC_AUTHORIZE)
      tp_scopy(p->report_decline, sizeof p->report_decline, "insufficient_funds");
    else if (f39[0] == '3')
      tp_scopy(p->report_decline, sizeof p->report_decline, "generic_decline");
    if (p->c) /* the host answered under this RRN: what an operator settles the owed reversal by */
      tp_scopy(p->c->processor_ref, sizeof p->c->processor_ref, p->rrn);
    to_reversal(l, p, now);
    return;
  }
  const char *f4 = tp_iso_get(m, 4), *f49 = tp_iso_get(m, 49);
  /* A missing field 4 or 49 is no echo either: an approval without them
   * may hold another amount (the form some hosts use to say so). */
  bool other_amount = p->amount[0] && (!f4 || strtoll(f4, NULL, 10) != strtoll(p->amount, NULL, 10));
  bool other_currency = p->cur[0] && (!f49 || strcmp(f49, p->cur) != 0);
  if (tp_iso_f39_approved(f39) && (other_amount || other_currency)) {
    /* Fields 4 and 49 of an answer echo the request's: an approval for
     * another amount or currency holds the card for something we did not
     * ask (docs/routing.md, "approval for another amount"). Never recorded
     * as approved: reversed durably, as a partial approval is. */
    tp_log(TP_LOG_ERROR, "iso_approval_mismatch", "{s:s, s:s, s:s, s:s, s:s, s:s}", "processor", l->name, "rrn",
           p->rrn, "asked_amount", p->amount, "answered_amount", f4 ? f4 : "", "asked_currency", p->cur,
           "answered_currency", f49 ? f49 : "");
    l->bad_messages++;
    to_reversal(l, p, now);
    return;
  }
  struct tp_proc_call *c = p->c;
  if (c) {
    tp_scopy(c->processor_ref, sizeof c->processor_ref, p->rrn);
    /* What field 90 of this message's reversal names (a later void). */
    snprintf(c->orig_data, sizeof c->orig_data, "%.4s%06u%.10s", p->mti, p->stan % 1000000u,
             p->orig_f7[0] ? p->orig_f7 : "0000000000");
    const char *f38 = tp_iso_get(m, 38);
    if (f38)
      tp_scopy(c->auth_code, sizeof c->auth_code, f38);
  }
  if (tp_iso_f39_approved(f39))
    report(l, p, TP_OUT_APPROVED, "");
  else
    report(l, p, TP_OUT_DECLINED, tp_iso_decline_code(f39));
  pend_drop(l, p);
}

static void on_reversal_answer(struct iso_link *l, struct pend *p, const struct tp_iso_msg *m)
{
  const char *f39 = tp_iso_get(m, 39);
  /* As for a call's answer (on_call_answer): one whose field 37 or 4 is not
   * the reversal's is about something else, and says nothing of it. */
  const char *f37 = tp_iso_get(m, 37), *f4 = tp_iso_get(m, 4);
  bool other_rrn = f37 && strcmp(f37, p->rrn) != 0;
  if (other_rrn || (f4 && p->amount[0] && strtoll(f4, NULL, 10) != strtoll(p->amount, NULL, 10))) {
    tp_log(TP_LOG_ERROR, "iso_bad_answer", "{s:s, s:s, s:s}", "processor", l->name, "mti", m->mti, "reason",
           other_rrn ? "field 37 does not match the reversal" : "field 4 does not match the reversal");
    l->bad_messages++;
    f39 = NULL; /* neither reversed nor refused: a void's outcome is unknown, a reversal is repeated */
    if (p->c) {
      report(l, p, TP_OUT_ERROR, "processor_status_unknown");
      pend_drop(l, p);
      return;
    }
  }
  /* Any approval code but a partial one (10) says the reversal was done
   * (11, 85 ... are approvals as in an answer to a call). */
  bool reversed = f39 && tp_iso_f39_approved(f39) && strcmp(f39, "10") != 0;
  /* 79, already reversed: an earlier send of this reversal (its 0410 lost
   * or late) got there; it was read as a refusal, and a void of a released
   * hold declined, a sale's reversal repeated for good (review, session 39) */
  reversed = reversed || (f39 && strcmp(f39, "79") == 0);
  bool unknown = f39 && strcmp(f39, "25") == 0; /* unable to locate: nothing stands */
  if ((reversed || unknown) && p->tries > 1)
    late_add(l, p->stan, p); /* a repeat's (0401, same STAN) answer may follow: late, not unknown */
  if (p->c) {
    tp_scopy(p->c->processor_ref, sizeof p->c->processor_ref, p->rrn);
    p->c->unlocated = unknown && !reversed;
    if (p->kind == TP_PROC_STATUS) {
      if (reversed || unknown)
        report(l, p, TP_OUT_NOT_FOUND, "");
      else
        report(l, p, TP_OUT_ERROR, "processor_reversal_failed");
    } else if (reversed || unknown) {
      /* A void: the hold is released, or nothing stands under the
       * authorization's RRN any more (an earlier repeat of this reversal
       * got there): voided either way. */
      report(l, p, TP_OUT_APPROVED, "");
    } else if (tp_decline_is_soft(tp_iso_decline_code(f39)) || tp_iso_f39_approved(f39)) {
      /* (An approval code left here is 10, a partial reversal: the hold
       * may still stand in part; reversed again, never a decline with an
       * empty code.) */
      /* 96, 91 ...: the host could not act now. That says nothing of an
       * earlier send of this reversal (a 0401 repeat is answered so while
       * the 0400 went through): unknown, and recovery reverses again until
       * the host says 00 or 25 (the chaos test found a void reported
       * declined on an authorization the host had reversed). */
      report(l, p, TP_OUT_ERROR, "processor_status_unknown");
    } else {
      report(l, p, TP_OUT_DECLINED, tp_iso_decline_code(f39));
    }
    pend_drop(l, p);
    return;
  }
  if (unknown && !p->believe_25 && p->tries == 1 && p->tries < l->rev_tries) {
    /* 25 says the host has no record of the call now, not that it never
     * will: a call still on its way (queued at the host, at its issuer,
     * on the connection that was lost) is approved after the reversal
     * missed it, and stands (review, session 41). Asked once more, after
     * timeout_ms (on_deadline repeats it as 0401); only the answer to that
     * is believed (a 25 sent twice to the first was taken as the second
     * answer). */
    tp_log(TP_LOG_INFO, "iso_reversal_unlocated_asking_again", "{s:s, s:s}", "processor", l->name, "rrn", p->rrn);
    return;
  }
  if (reversed || unknown) {
    tp_log(TP_LOG_INFO, "iso_reversal_done", "{s:s, s:s, s:s}", "processor", l->name, "rrn", p->rrn, "code",
           f39);
    reversed_add(l, p->rrn);
    pend_drop(l, p);
    return;
  }
  /* Refused: keep repeating (0401) until reversal_tries runs out. */
  tp_log(TP_LOG_WARN, "iso_reversal_refused", "{s:s, s:s, s:s}", "processor", l->name, "rrn", p->rrn, "code",
         f39 ? f39 : "");
}

static _Atomic(tp_reversal_owed_fn) reversal_owed_fn; /* set once the payment flow recovers, links running */

void tp_connector_on_reversal_owed(tp_reversal_owed_fn fn)
{
  atomic_store(&reversal_owed_fn, fn);
}

/* A late answer to a call given up on (its STAN in the late ring). Unless
 * it is a decline, the call may stand at the host whatever its reversal
 * was told (a 25 came back before the host saw the call): a reversal of
 * it is sent again, with no caller (the payment moved on long ago), and
 * the RRN is no longer taken as reversed until that one is acknowledged.
 * A host that has reversed it answers 79 or 25 again, so this is safe. */
static void late_answer(struct iso_link *l, uint32_t stan, const struct tp_iso_msg *m, int64_t now)
{
  struct late_call *lc = NULL;
  for (size_t i = 0; i < ISO_LATE_RING && !lc; i++)
    if (l->late[i] == stan && l->late_call[i].is_call)
      lc = &l->late_call[i];
  const char *f39 = tp_iso_get(m, 39), *f37 = tp_iso_get(m, 37);
  /* The call's own response (0110 to 0100, 0210 to 0200, 0230 to 0220),
   * naming its RRN and saying something in field 39: anything else with
   * that STAN (an 0810, a 0410) is not about it. */
  if (!lc || m->mti[0] != lc->mti[0] || m->mti[1] != lc->mti[1] || m->mti[2] != lc->mti[2] + 1 || !f37 ||
      strcmp(f37, lc->rrn) != 0 || !f39)
    return;
  if (tp_iso_f39_well_formed(f39) && !tp_iso_f39_approved(f39) && strcmp(f39, "09") != 0 &&
      strcmp(f39, "10") != 0 && strcmp(f39, "08") != 0 && strcmp(f39, "32") != 0)
    return; /* declined: nothing stands */
  /* Once per call: a host that sends the late answer again (after each
   * reversal, or a hundred copies) made a reversal each, without end. */
  lc->is_call = false;
  /* The reversal below is only the fast path, in memory: the attempt, which
   * may have been closed as reversed meanwhile, owes it again durably
   * (recovery repeats it until the host acknowledges it). */
  tp_reversal_owed_fn owed = atomic_load(&reversal_owed_fn);
  if (lc->ref[0] && owed)
    owed(lc->ref);
  struct pend *r = calloc(1, sizeof *r);
  if (!r)
    return;
  r->type = PT_REVERSAL;
  r->kind = lc->kind;
  tp_scopy(r->rrn, sizeof r->rrn, lc->rrn);
  tp_scopy(r->proc_code, sizeof r->proc_code, lc->proc_code);
  tp_scopy(r->amount, sizeof r->amount, lc->amount);
  tp_scopy(r->cur, sizeof r->cur, lc->cur);
  tp_scopy(r->orig_mti, sizeof r->orig_mti, lc->mti);
  tp_scopy(r->orig_f7, sizeof r->orig_f7, lc->f7);
  r->orig_stan = stan;
  r->believe_25 = true; /* the host has answered the call: its 25 now means nothing stands */
  reversed_forget(l, r->rrn);
  tp_log(TP_LOG_WARN, "iso_late_approval_reversed", "{s:s, s:s, s:s, s:s}", "processor", l->name, "mti", m->mti,
         "rrn", r->rrn, "code", f39 ? f39 : "");
  tp_metric_inc("turnpike_iso_reversals_total", l->labels, 1);
  l->reversals++;
  r->created = now;
  if (l->signed_on && send_pend(l, r, now) == 0)
    return;
  list_add(l, r, 2);
}

static void on_message(struct iso_link *l, const uint8_t *body, size_t len, int64_t now)
{
  struct tp_iso_msg m;
  char err[160];
  if (tp_iso_unpack(&m, body, len, err, sizeof err) != 0) {
    l->bad_messages++;
    tp_metric_inc("turnpike_iso_bad_messages_total", l->labels, 1);
    tp_log(TP_LOG_ERROR, "iso_bad_message", "{s:s, s:s, s:I}", "processor", l->name, "error", err, "bytes",
           (json_int_t)len);
    return;
  }
  if (TP_LOG_ON(TP_LOG_DEBUG)) {
    char d[512];
    tp_iso_describe(&m, d, sizeof d);
    tp_log(TP_LOG_DEBUG, "iso_in", "{s:s, s:s}", "processor", l->name, "msg", d);
  }
  const char *f11 = tp_iso_get(&m, 11);
  if (strcmp(m.mti, "0800") == 0 || strcmp(m.mti, "0801") == 0) { /* a request, or its repeat */
    answer_host_request(l, &m, now);
    const char *f70 = tp_iso_get(&m, 70);
    if (f70 && strcmp(f70, "002") == 0) {
      /* The host signs off: no financial message may follow until a new
       * sign-on. The link is dropped (what was on the wire is reversed on
       * the next one, as after any loss) and signed on again after the
       * backoff; meanwhile payments go to other processors. */
      link_fail(l, "signed off by the host", now);
    }
    goto out;
  }
  if (f11 && m.mti[1] == '8' && (m.mti[2] == '0' || m.mti[2] == '2')) {
    /* network management advice (0820: a cutover, say), or another
     * request of that class: answered by its field 70, not a bad message */
    answer_host_request(l, &m, now);
    goto out;
  }
  if (!f11 || m.mti[2] == '0' || m.mti[2] == '2' || m.mti[2] == '4') {
    l->bad_messages++;
    tp_log(TP_LOG_ERROR, "iso_unexpected_message", "{s:s, s:s}", "processor", l->name, "mti", m.mti);
    if (f11 && (m.mti[2] == '0' || m.mti[2] == '2'))
      answer_host_request(l, &m, now);
    goto out;
  }
  uint32_t stan = (uint32_t)atoi(f11);
  struct pend *p = table_find(l, stan);
  if (!p || p->where != 1) {
    if (late_stan(l, stan)) {
      tp_log(TP_LOG_WARN, "iso_late_response_ignored", "{s:s, s:s, s:s, s:s}", "processor", l->name, "mti", m.mti,
             "stan", f11, "code", tp_iso_get(&m, 39) ? tp_iso_get(&m, 39) : "");
      late_answer(l, stan, &m, now);
    } else {
      l->bad_messages++;
      tp_log(TP_LOG_ERROR, "iso_unknown_stan", "{s:s, s:s, s:s}", "processor", l->name, "mti", m.mti, "stan", f11);
    }
    goto out;
  }
  /* The answer to 0100 is 0110, to 0220 0230, to 0400/0401 0410; its
   * last digit the origin, 0-5 in ISO 8583:1987 (0219 was taken). */
  if (m.mti[0] != p->mti[0] || m.mti[1] != p->mti[1] || m.mti[2] != p->mti[2] + 1 || m.mti[3] < '0' ||
      m.mti[3] > '5') {
    l->bad_messages++;
    tp_log(TP_LOG_ERROR, "iso_mti_mismatch", "{s:s, s:s, s:s}", "processor", l->name, "mti", m.mti, "request",
           p->mti);
    goto out;
  }
  switch (p->type) {
  case PT_SIGNON: {
    const char *f39 = tp_iso_get(&m, 39);
    pend_drop(l, p);
    if (!f39 || strcmp(f39, "00") != 0) {
      link_fail(l, "sign-on refused", now);
      break;
    }
    l->signed_on = true;
    set_state(l, LINK_UP);
    l->backoff_ms = ISO_BACKOFF_MIN_MS;
    l->next_echo = now + l->echo_ms;
    tp_log(TP_LOG_INFO, "iso_signed_on", "{s:s}", "processor", l->name);
    break;
  }
  case PT_ECHO: {
    const char *f39 = tp_iso_get(&m, 39);
    pthread_mutex_lock(&l->mu);
    l->st_last_echo_ms = now - l->echo_sent_at;
    pthread_mutex_unlock(&l->mu);
    pend_drop(l, p);
    if (!f39 || strcmp(f39, "00") != 0) {
      /* 91, switch inoperative ...: the host says it cannot take payments
       * now; they go elsewhere until a new sign-on (the answer was not
       * looked at, and the link stayed in use). */
      link_fail(l, "echo refused", now);
    }
    break;
  }
  case PT_CALL:
    on_call_answer(l, p, &m, now);
    break;
  case PT_REVERSAL:
    on_reversal_answer(l, p, &m);
    break;
  }
out:
  tp_iso_free(&m);
}

static void read_in(struct iso_link *l, int64_t now)
{
  for (;;) {
    ssize_t n = recv(l->fd, l->in + l->in_len, sizeof l->in - l->in_len, 0);
    if (n == 0) {
      link_fail(l, "closed by the host", now);
      return;
    }
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        link_fail(l, strerror(errno), now);
      return;
    }
    l->in_len += (size_t)n;
    size_t pos = 0;
    while (l->in_len - pos >= 2) {
      size_t flen = (size_t)l->in[pos] << 8 | l->in[pos + 1];
      if (flen == 0 || flen > TP_ISO_MAX_MSG) {
        /* The stream is out of step: nothing after this can be trusted. */
        l->bad_messages++;
        tp_metric_inc("turnpike_iso_bad_messages_total", l->labels, 1);
        char why[96];
        snprintf(why, sizeof why, "bad frame length %zu", flen);
        link_fail(l, why, now);
        return;
      }
      if (l->in_len - pos - 2 < flen)
        break;
      on_message(l, l->in + pos + 2, flen, now);
      if (l->state != LINK_UP)
        return; /* the message made us drop the link */
      pos += 2 + flen;
    }
    memmove(l->in, l->in + pos, l->in_len - pos);
    l->in_len -= pos;
    explicit_bzero(l->in + l->in_len, pos);
    if (l->in_len == 0)
      l->in_since = 0;
    else if (pos > 0 || l->in_since == 0)
      l->in_since = now;
  }
}

/* ---- timers --------------------------------------------------------------- */

/* Stop repeating reversal p here. This is only the fast path: the reversal
 * of a timed-out authorization, capture or refund is owed durably by the
 * gateway's recovery (payflow commits the attempt "reversal_pending", or
 * leaves it "sent" when a crash kept it from saying), and so is recovery's
 * own status query, so those are handed over; so is a void, whose attempt
 * stays "sent" after a timeout (recovery reverses the authorization again;
 * the void of a lapsed authorization is the exception, canceled whatever
 * the answer: its hold lapses at the issuer anyway). */
static void reversal_give_up(struct iso_link *l, struct pend *p, const char *why)
{
  bool owned = p->kind == TP_PROC_AUTHORIZE || p->kind == TP_PROC_CAPTURE || p->kind == TP_PROC_REFUND ||
               p->kind == TP_PROC_STATUS || p->kind == TP_PROC_VOID;
  tp_log(owned ? TP_LOG_WARN : TP_LOG_ERROR, "iso_reversal_gave_up", "{s:s, s:s, s:i, s:s, s:s}", "processor",
         l->name, "rrn", p->rrn, "tries", p->tries, "reason", why, "owner", owned ? "recovery" : "none");
  tp_metric_inc("turnpike_iso_reversals_failed_total", l->labels, 1);
  report(l, p, TP_OUT_ERROR, "processor_status_unknown"); /* a caller still waiting is told */
  pend_drop(l, p);
}

static void on_deadline(struct iso_link *l, struct pend *p, int64_t now)
{
  switch (p->type) {
  case PT_SIGNON:
  case PT_ECHO: {
    const char *why = p->type == PT_SIGNON ? "sign-on timed out" : "echo timed out";
    pend_drop(l, p);
    link_fail(l, why, now);
    return;
  }
  case PT_CALL:
    tp_log(TP_LOG_WARN, "iso_timeout", "{s:s, s:s, s:s}", "processor", l->name, "mti", p->mti, "rrn", p->rrn);
    to_reversal(l, p, now);
    return;
  case PT_REVERSAL:
    if (p->c) /* a void or status query: the caller hears now; we keep trying */
      report(l, p, TP_OUT_ERROR, p->kind == TP_PROC_STATUS ? "processor_status_unknown" : "processor_timeout");
    if (p->tries >= l->rev_tries) {
      reversal_give_up(l, p, "no acknowledgement");
      return;
    }
    if (send_pend(l, p, now) != 0)
      list_add(l, p, 2);
    return;
  }
}

static void check_resend(struct iso_link *l, int64_t now)
{
  struct pend *p = l->resend_head;
  while (p) {
    struct pend *next = p->next;
    if (p->c && now >= (p->caller_by ? p->caller_by : p->deadline)) {
      p->report_on_send = false;
      report(l, p, TP_OUT_ERROR, "processor_status_unknown");
    }
    if (l->signed_on && send_pend(l, p, now) == 0) {
      p = next;
      continue;
    }
    if (now - p->created > ISO_RESEND_MAX_MS)
      reversal_give_up(l, p, "link down too long");
    p = next;
  }
}

/* ---- new calls ---------------------------------------------------------------- */

static void start_call(struct iso_link *l, struct pend *p, int64_t now)
{
  if (p->c)
    p->c->unlocated = false;
  if (p->type == PT_REVERSAL && p->c && reversed_known(l, p->rrn)) {
    tp_log(TP_LOG_INFO, "iso_reversal_known", "{s:s, s:s}", "processor", l->name, "rrn", p->rrn);
    tp_scopy(p->c->processor_ref, sizeof p->c->processor_ref, p->rrn);
    /* as the acknowledgement would have answered it (on_reversal_answer) */
    report(l, p, p->kind == TP_PROC_STATUS ? TP_OUT_NOT_FOUND : TP_OUT_APPROVED, "");
    pend_free(p);
    return;
  }
  if (!l->signed_on) {
    report(l, p, TP_OUT_ERROR, "processor_link_down");
    pend_free(p);
    return;
  }
  if (p->type == PT_REVERSAL)
    l->reversals++;
  p->created = now;
  /* A link that resets as each message goes out never lets a deadline
   * pass (every resend moves it): the caller's own does not move. */
  p->caller_by = now + l->timeout_ms;
  if (send_pend(l, p, now) != 0) {
    report(l, p, TP_OUT_ERROR, "processor_queue_full");
    pend_drop(l, p);
  }
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static void *link_main(void *arg)
{
  struct iso_link *l = arg;
  l->backoff_ms = ISO_BACKOFF_MIN_MS;
  for (;;) {
    int64_t now = tp_mono_ms();
    pthread_mutex_lock(&l->mu);
    bool stop = l->stop;
    struct pend *q = l->inq_head;
    l->inq_head = l->inq_tail = NULL;
    l->inq_len = 0;
    pthread_mutex_unlock(&l->mu);
    if (stop) {
      /* Drain: every waiting caller hears exactly once. */
      while (q) {
        struct pend *n = q->next;
        report(l, q, TP_OUT_ERROR, "processor_cancelled");
        pend_free(q);
        q = n;
      }
      while (l->wire_head) {
        struct pend *p = l->wire_head;
        report(l, p, TP_OUT_ERROR, p->start_off >= l->out_written ? "processor_cancelled" : "processor_status_unknown");
        pend_drop(l, p);
      }
      while (l->resend_head) {
        report(l, l->resend_head, TP_OUT_ERROR, "processor_status_unknown");
        pend_drop(l, l->resend_head);
      }
      if (l->fd >= 0)
        close(l->fd);
      return NULL;
    }
    if (l->state == LINK_DOWN && now >= l->reconnect_at)
      start_connect(l, now);
    while (q) {
      struct pend *n = q->next;
      q->next = NULL;
      start_call(l, q, now);
      q = n;
    }
    while (l->wire_head && l->wire_head->deadline <= now)
      on_deadline(l, l->wire_head, now);
    if (l->state == LINK_CONNECTING && now - l->echo_sent_at > l->timeout_ms)
      link_fail(l, "connect timed out", now);
    /* A frame begun and not finished within timeout_ms: the stream is
     * stuck or out of step (only the echo timeout caught it, and never
     * with echoes off, while every call behind it timed out). */
    if (l->fd >= 0 && l->in_len > 0 && l->in_since > 0 && now - l->in_since > l->timeout_ms)
      link_fail(l, "a frame stalled", now);
    if (l->resend_head)
      check_resend(l, now);
    if (l->signed_on && l->echo_ms > 0 && now >= l->next_echo) {
      struct pend *p = calloc(1, sizeof *p);
      if (p) {
        p->type = PT_ECHO;
        l->echo_sent_at = now;
        if (send_pend(l, p, now) != 0)
          pend_drop(l, p);
      }
      l->next_echo = now + l->echo_ms;
    }
    publish_stats(l);

    int64_t wake = now + 1000;
    if (l->wire_head)
      wake = min64(wake, l->wire_head->deadline);
    if (l->state == LINK_DOWN)
      wake = min64(wake, l->reconnect_at);
    if (l->signed_on && l->echo_ms > 0)
      wake = min64(wake, l->next_echo);
    if (l->resend_head && !l->signed_on)
      wake = min64(wake, now + 50);
    if (l->in_len > 0 && l->in_since > 0)
      wake = min64(wake, l->in_since + l->timeout_ms + 1);
    struct pollfd pf[2] = {{.fd = l->efd, .events = POLLIN}, {.fd = l->fd, .events = 0}};
    int nfds = 1;
    if (l->fd >= 0) {
      pf[1].events = l->state == LINK_CONNECTING ? POLLOUT : (short)(POLLIN | (l->out_len ? POLLOUT : 0));
      nfds = 2;
    }
    int ms = (int)(wake > now ? wake - now : 0);
    if (poll(pf, (nfds_t)nfds, ms) < 0 && errno != EINTR) {
      tp_log(TP_LOG_ERROR, "iso_poll_failed", "{s:s}", "processor", l->name);
      usleep(10000);
      continue;
    }
    now = tp_mono_ms();
    if (pf[0].revents & POLLIN) {
      uint64_t v;
      if (read(l->efd, &v, sizeof v) < 0 && errno != EAGAIN)
        tp_log(TP_LOG_ERROR, "iso_eventfd_read_failed", "{s:s}", "processor", l->name);
    }
    if (nfds == 2 && pf[1].revents) {
      if (l->state == LINK_CONNECTING) {
        int e = 0;
        socklen_t el = sizeof e;
        getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &e, &el);
        if (e != 0)
          link_fail(l, strerror(e), now);
        else
          on_connected(l, now);
        continue;
      }
      if (pf[1].revents & (POLLIN | POLLHUP | POLLERR))
        read_in(l, now);
      if (l->state == LINK_UP && (pf[1].revents & POLLOUT))
        flush_out(l);
    }
  }
}

/* ---- the connector interface ------------------------------------------------ */

static int iso_submit(void *cls, struct tp_proc_call *c)
{
  struct iso_link *l = cls;
  struct pend *p = calloc(1, sizeof *p);
  if (!p)
    return -1;
  p->c = c;
  p->kind = c->kind;
  p->capture = c->capture;
  p->type = c->kind == TP_PROC_VOID || c->kind == TP_PROC_STATUS ? PT_REVERSAL : PT_CALL;
  if (c->amount < 0 || c->amount > 999999999999LL) {
    pend_free(p);
    return -1;
  }
  snprintf(p->amount, sizeof p->amount, "%012lld", (long long)c->amount);
  if (c->currency[0] && tp_iso_currency_numeric(c->currency, p->cur) != 0) {
    pend_free(p);
    return -1;
  }
  const char *target = c->orig_ref[0] ? c->orig_ref : c->ref;
  if (p->type == PT_REVERSAL) {
    /* Reverse the authorization (void) or whatever went out under the
     * reference (status query after a crash, or an owed reversal): field
     * 90 and the processing code name that message as it was sent, so a
     * host that looks a capture (0220) or refund (0200, 20) up by them
     * finds it too. */
    tp_iso_rrn(target, p->rrn);
    enum tp_proc_kind of = c->kind == TP_PROC_STATUS ? c->status_of : TP_PROC_AUTHORIZE;
    const char *mti = "0100";
    if (of == TP_PROC_CAPTURE)
      mti = "0220";
    else if (of == TP_PROC_REFUND || (c->kind == TP_PROC_STATUS && of == TP_PROC_AUTHORIZE && c->capture))
      mti = "0200"; /* a refund, or a sale (authorize and capture) */
    tp_scopy(p->orig_mti, sizeof p->orig_mti, mti);
    tp_scopy(p->proc_code, sizeof p->proc_code, of == TP_PROC_REFUND ? "200000" : "000000");
    /* A void knows its authorization's message (kept on the charge): field
     * 90 names it whole, for hosts that find the original by it rather
     * than by field 37. */
    /* So does recovery's reversal of a call this link gave up reversing
     * (the attempt's orig_data). */
    const char *od = c->kind == TP_PROC_VOID || c->kind == TP_PROC_STATUS ? c->orig_data : "";
    if (strlen(od) == 20 && strspn(od, "0123456789") == 20) {
      memcpy(p->orig_mti, od, 4);
      p->orig_mti[4] = '\0';
      p->orig_stan = (uint32_t)strtoul((char[7]){od[4], od[5], od[6], od[7], od[8], od[9], 0}, NULL, 10);
      memcpy(p->orig_f7, od + 10, 10);
      p->orig_f7[10] = '\0';
    }
  } else {
    tp_iso_rrn(c->ref, p->rrn);
    if (c->kind != TP_PROC_AUTHORIZE)
      tp_iso_rrn(target, p->orig_rrn);
    /* The STAN and field 7 its write-ahead recorded (tp_iso8583_reserve). */
    const char *od = c->orig_data;
    if (strlen(od) == 20 && strspn(od, "0123456789") == 20 && memcmp(od, call_mti(c->kind, c->capture), 4) == 0) {
      p->want_stan = (uint32_t)strtoul((char[7]){od[4], od[5], od[6], od[7], od[8], od[9], 0}, NULL, 10);
      memcpy(p->want_f7, od + 10, 10);
      p->want_f7[10] = '\0';
      if (p->want_stan == 0)
        p->want_f7[0] = '\0';
    }
    tp_scopy(p->proc_code, sizeof p->proc_code, c->kind == TP_PROC_REFUND ? "200000" : "000000");
    if (!p->cur[0]) {
      pend_free(p);
      return -1;
    }
  }
  if (c->pan[0])
    tp_scopy(p->pan, sizeof p->pan, c->pan);
  if (c->exp_month >= 1 && c->exp_month <= 12 && c->exp_year > 0)
    snprintf(p->exp, sizeof p->exp, "%02u%02u", (unsigned)c->exp_year % 100u, (unsigned)c->exp_month % 100u);
  pthread_mutex_lock(&l->mu);
  if (l->stop || l->inq_len >= ISO_INFLIGHT_MAX) {
    pthread_mutex_unlock(&l->mu);
    pend_free(p);
    return -1;
  }
  if (l->inq_tail)
    l->inq_tail->next = p;
  else
    l->inq_head = p;
  l->inq_tail = p;
  l->inq_len++;
  pthread_mutex_unlock(&l->mu);
  uint64_t one = 1;
  if (write(l->efd, &one, sizeof one) < 0 && errno != EAGAIN)
    tp_log(TP_LOG_ERROR, "iso_wake_failed", "{s:s}", "processor", l->name);
  return 0;
}

static void iso_stop(void *cls)
{
  struct iso_link *l = cls;
  pthread_mutex_lock(&l->mu);
  l->stop = true;
  pthread_mutex_unlock(&l->mu);
  uint64_t one = 1;
  if (write(l->efd, &one, sizeof one) < 0)
    tp_log(TP_LOG_ERROR, "iso_wake_failed", "{s:s}", "processor", l->name);
  pthread_join(l->thread, NULL);
  close(l->efd);
  seq_put(l->seq);
  if (l->out) {
    explicit_bzero(l->out, l->out_cap);
    free(l->out);
  }
  pthread_mutex_destroy(&l->mu);
  free(l);
}

static const struct tp_connector_ops iso_ops = {"iso8583", iso_submit, iso_stop};

int tp_iso8583_start(struct tp_connector *out, const char *name, const char *host, int port, int timeout_ms,
                     const char *terminal_id, const char *merchant_id)
{
  if (!name || !host || port <= 0 || port > 65535 || strlen(host) >= 256)
    return -1;
  struct iso_link *l = calloc(1, sizeof *l);
  if (!l)
    return -1;
  tp_scopy(l->name, sizeof l->name, name);
  tp_scopy(l->host, sizeof l->host, host);
  l->port = port;
  l->timeout_ms = timeout_ms > 0 ? timeout_ms : 2000;
  char section[96];
  snprintf(section, sizeof section, "processor.%s", name);
  l->echo_ms = (int)tp_config_int(section, "echo_interval_ms", 5000, 0, 3600000);
  l->rev_tries = (int)tp_config_int(section, "reversal_tries", 5, 1, 100);
  const char *tid = terminal_id && *terminal_id ? terminal_id : tp_config_get(section, "terminal_id");
  const char *mid = merchant_id && *merchant_id ? merchant_id : tp_config_get(section, "merchant_id");
  tp_scopy(l->tid, sizeof l->tid, tid ? tid : "TP000001");
  tp_scopy(l->mid, sizeof l->mid, mid ? mid : "TURNPIKE0000001");
  /* Fields 41/42 are ans: reject what the codec would refuse at send time. */
  struct tp_iso_msg probe;
  tp_iso_init(&probe, "0800");
  int bad = tp_iso_set(&probe, 41, l->tid) | tp_iso_set(&probe, 42, l->mid);
  tp_iso_free(&probe);
  char esc[80];
  tp_metric_label_escape(esc, sizeof esc, name);
  snprintf(l->labels, sizeof l->labels, "processor=\"%s\"", esc);
  l->fd = -1;
  l->seq = bad ? NULL : seq_get(l->tid);
  l->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  pthread_mutex_init(&l->mu, NULL);
  if (bad || !l->seq || l->efd < 0 || pthread_create(&l->thread, NULL, link_main, l) != 0) {
    if (l->seq)
      seq_put(l->seq);
    if (l->efd >= 0)
      close(l->efd);
    pthread_mutex_destroy(&l->mu);
    free(l);
    return -1;
  }
  pthread_setname_np(l->thread, "tp-iso");
  tp_scopy(out->name, sizeof out->name, name);
  out->ops = &iso_ops;
  out->cls = l;
  return 0;
}

int tp_iso8583_reserve(const struct tp_connector *c, enum tp_proc_kind kind, bool capture, char out[24])
{
  if (!c || c->ops != &iso_ops || (kind != TP_PROC_AUTHORIZE && kind != TP_PROC_CAPTURE && kind != TP_PROC_REFUND))
    return -1;
  struct iso_link *l = c->cls;
  char f7[11];
  utc_f7(f7);
  snprintf(out, 24, "%s%06u%s", call_mti(kind, capture), seq_next(l->seq), f7);
  return 0;
}

bool tp_iso8583_signed_on(const struct tp_connector *c)
{
  if (!c || c->ops != &iso_ops)
    return false;
  struct iso_link *l = c->cls;
  pthread_mutex_lock(&l->mu);
  bool on = l->st_signed_on;
  pthread_mutex_unlock(&l->mu);
  return on;
}

void tp_iso8583_stats(const struct tp_connector *c, struct json_t *out)
{
  if (!c || c->ops != &iso_ops || !out)
    return;
  struct iso_link *l = c->cls;
  static const char *const states[] = {"down", "connecting", "up"};
  pthread_mutex_lock(&l->mu);
  json_object_set_new(out, "link", json_string(states[l->st_state]));
  json_object_set_new(out, "signed_on", json_boolean(l->st_signed_on));
  json_object_set_new(out, "in_flight", json_integer((json_int_t)l->st_in_flight));
  json_object_set_new(out, "reversals_pending", json_integer((json_int_t)l->st_reversals));
  json_object_set_new(out, "last_echo_ms", json_integer(l->st_last_echo_ms));
  json_object_set_new(out, "reconnects", json_integer((json_int_t)l->st_reconnects));
  json_object_set_new(out, "bad_messages", json_integer((json_int_t)l->st_bad_messages));
  pthread_mutex_unlock(&l->mu);
}

/* The ISO 8583 connector against a scripted acquirer host on 127.0.0.1
 * (port 0): sign-on and echo, approvals and declines matched by STAN,
 * reversal of a timed-out authorization with the late approval ignored, a
 * status query answered by reversal, and a link that recovers from bad and
 * truncated messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "connectors/connector.h"
#include "core/iso8583.h"
#include "util.h"

/* ---- the scripted host ---------------------------------------------------- */

static struct host {
  pthread_mutex_t mu;
  pthread_t thread;
  int lfd, cfd;
  int port;
  bool stop;
  /* behaviour */
  bool hold_auth;           /* do not answer 0100/0200; answer late, just before the 0410 */
  uint8_t inject[64];       /* raw bytes to send once */
  size_t inject_len;
  bool close_after_inject;
  bool kick;                /* close the connection now */
  int ignore_reversals;     /* leave this many 0400/0401 unanswered */
  int refuse_reversals;     /* answer this many 0400/0401 with 39 = 96 */
  int misname_reversals;    /* answer this many 0400/0401 00 with another field 37 */
  /* what it saw */
  int connections, signons, echos, auths, financials, advices, reversals, repeats;
  char held_stan[7], held_rrn[13]; /* the held request's 11 and 37 */
  char last_rev_37[13], last_rev_90[43], last_rev_11[7], last_rev_3[7];
  char last_req_48[16], last_req_11[7];
  char last_pan_seen[20];
} H;

static void host_send(int fd, struct tp_iso_msg *m)
{
  uint8_t buf[2 + TP_ISO_MAX_MSG];
  int n = tp_iso_frame(m, buf, sizeof buf);
  assert_true(n > 0);
  assert_int_equal(send(fd, buf, (size_t)n, MSG_NOSIGNAL), n);
}

static void reply(int fd, const struct tp_iso_msg *q, const char *mti, const char *f39)
{
  struct tp_iso_msg r;
  tp_iso_init(&r, mti);
  static const int echo[] = {3, 4, 7, 11, 37, 41, 42, 49, 70};
  for (size_t i = 0; i < sizeof echo / sizeof echo[0]; i++)
    if (tp_iso_get(q, echo[i]))
      tp_iso_set(&r, echo[i], tp_iso_get(q, echo[i]));
  tp_iso_set(&r, 39, f39);
  if (strcmp(f39, "00") == 0 && mti[1] != '8' && mti[1] != '4')
    tp_iso_set(&r, 38, "A12345");
  host_send(fd, &r);
  tp_iso_free(&r);
}

static void host_handle(int fd, const uint8_t *body, size_t len)
{
  struct tp_iso_msg q;
  char err[128];
  if (tp_iso_unpack(&q, body, len, err, sizeof err) != 0)
    fail_msg("host could not parse the connector's message: %s", err);
  pthread_mutex_lock(&H.mu);
  if (strcmp(q.mti, "0800") == 0) {
    if (strcmp(tp_iso_get(&q, 70), "001") == 0)
      H.signons++;
    else
      H.echos++;
    reply(fd, &q, "0810", "00");
  } else if (strcmp(q.mti, "0100") == 0 || strcmp(q.mti, "0200") == 0 || strcmp(q.mti, "0220") == 0) {
    if (q.mti[1] == '1')
      H.auths++;
    else if (q.mti[2] == '0')
      H.financials++;
    else
      H.advices++;
    snprintf(H.last_pan_seen, sizeof H.last_pan_seen, "%s", tp_iso_get(&q, 2) ? tp_iso_get(&q, 2) : "");
    snprintf(H.last_req_48, sizeof H.last_req_48, "%s", tp_iso_get(&q, 48) ? tp_iso_get(&q, 48) : "");
    snprintf(H.last_req_11, sizeof H.last_req_11, "%s", tp_iso_get(&q, 11));
    if (H.hold_auth && q.mti[2] == '0') {
      snprintf(H.held_stan, sizeof H.held_stan, "%s", tp_iso_get(&q, 11));
      snprintf(H.held_rrn, sizeof H.held_rrn, "%s", tp_iso_get(&q, 37));
    } else {
      const char *pan = tp_iso_get(&q, 2);
      const char *f39 = pan ? tp_iso_f39_for_decline(tp_test_card_decline(pan, true)) : "00";
      if (pan && strcmp(pan, "5555555555554444") == 0)
        f39 = "10"; /* partial approval */
      if (pan && strcmp(pan, "5105105105105100") == 0)
        f39 = "08"; /* honour with identification */
      char mti[5];
      snprintf(mti, sizeof mti, "%c%c%c0", q.mti[0], q.mti[1], q.mti[2] + 1);
      reply(fd, &q, mti, f39);
    }
  } else if (strcmp(q.mti, "0400") == 0 || strcmp(q.mti, "0401") == 0) {
    H.reversals++;
    if (q.mti[3] == '1')
      H.repeats++;
    snprintf(H.last_rev_37, sizeof H.last_rev_37, "%s", tp_iso_get(&q, 37));
    snprintf(H.last_rev_90, sizeof H.last_rev_90, "%s", tp_iso_get(&q, 90));
    snprintf(H.last_rev_11, sizeof H.last_rev_11, "%s", tp_iso_get(&q, 11));
    snprintf(H.last_rev_3, sizeof H.last_rev_3, "%s", tp_iso_get(&q, 3) ? tp_iso_get(&q, 3) : "");
    if (H.ignore_reversals > 0) {
      H.ignore_reversals--;
      pthread_mutex_unlock(&H.mu);
      tp_iso_free(&q);
      return;
    }
    if (H.refuse_reversals > 0) {
      H.refuse_reversals--;
      reply(fd, &q, "0410", "96");
      pthread_mutex_unlock(&H.mu);
      tp_iso_free(&q);
      return;
    }
    if (H.misname_reversals > 0) {
      H.misname_reversals--;
      tp_iso_set(&q, 37, "ZZZZZZZZZZZZ"); /* echoed: another transaction's */
      reply(fd, &q, "0410", "00");
      pthread_mutex_unlock(&H.mu);
      tp_iso_free(&q);
      return;
    }
    if (H.held_stan[0]) {
      /* The late approval of the timed-out request arrives first. */
      struct tp_iso_msg late;
      tp_iso_init(&late, "0110");
      tp_iso_set(&late, 11, H.held_stan);
      tp_iso_set(&late, 37, H.held_rrn);
      tp_iso_set(&late, 38, "LATE01");
      tp_iso_set(&late, 39, "00");
      host_send(fd, &late);
      tp_iso_free(&late);
      H.held_stan[0] = '\0';
    }
    reply(fd, &q, "0410", "00");
  }
  pthread_mutex_unlock(&H.mu);
  tp_iso_free(&q);
}

static void *host_main(void *arg)
{
  (void)arg;
  uint8_t in[2 + TP_ISO_MAX_MSG];
  size_t in_len = 0;
  for (;;) {
    pthread_mutex_lock(&H.mu);
    bool stop = H.stop;
    int cfd = H.cfd;
    if (cfd >= 0 && H.kick) {
      H.kick = false;
      close(cfd);
      H.cfd = cfd = -1;
    }
    if (cfd >= 0 && H.inject_len) {
      assert_int_equal(send(cfd, H.inject, H.inject_len, MSG_NOSIGNAL), (ssize_t)H.inject_len);
      H.inject_len = 0;
      if (H.close_after_inject) {
        H.close_after_inject = false;
        close(cfd);
        H.cfd = cfd = -1;
      }
    }
    pthread_mutex_unlock(&H.mu);
    if (stop)
      break;
    struct pollfd pf[2] = {{.fd = H.lfd, .events = POLLIN}, {.fd = cfd, .events = POLLIN}};
    if (poll(pf, cfd >= 0 ? 2 : 1, 20) <= 0)
      continue;
    if (pf[0].revents & POLLIN) {
      int fd = accept(H.lfd, NULL, NULL);
      if (fd >= 0) {
        pthread_mutex_lock(&H.mu);
        if (H.cfd >= 0)
          close(H.cfd);
        H.cfd = fd;
        H.connections++;
        in_len = 0;
        pthread_mutex_unlock(&H.mu);
      }
      continue;
    }
    if (cfd >= 0 && (pf[1].revents & (POLLIN | POLLHUP))) {
      ssize_t n = recv(cfd, in + in_len, sizeof in - in_len, 0);
      if (n <= 0) {
        pthread_mutex_lock(&H.mu);
        if (H.cfd == cfd) {
          close(cfd);
          H.cfd = -1;
        }
        pthread_mutex_unlock(&H.mu);
        in_len = 0;
        continue;
      }
      in_len += (size_t)n;
      size_t pos = 0;
      while (in_len - pos >= 2) {
        size_t flen = (size_t)in[pos] << 8 | in[pos + 1];
        if (in_len - pos - 2 < flen)
          break;
        host_handle(cfd, in + pos + 2, flen);
        pos += 2 + flen;
      }
      memmove(in, in + pos, in_len - pos);
      in_len -= pos;
    }
  }
  return NULL;
}

static void host_start(void)
{
  memset(&H, 0, sizeof H);
  pthread_mutex_init(&H.mu, NULL);
  H.cfd = -1;
  H.lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0};
  assert_int_equal(bind(H.lfd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(H.lfd, 8), 0);
  socklen_t al = sizeof a;
  getsockname(H.lfd, (struct sockaddr *)&a, &al);
  H.port = ntohs(a.sin_port);
  assert_int_equal(pthread_create(&H.thread, NULL, host_main, NULL), 0);
}

static void host_stop(void)
{
  pthread_mutex_lock(&H.mu);
  H.stop = true;
  pthread_mutex_unlock(&H.mu);
  pthread_join(H.thread, NULL);
  if (H.cfd >= 0)
    close(H.cfd);
  close(H.lfd);
  pthread_mutex_destroy(&H.mu);
}

/* Set one of the host's counters of scripted answers. */
static void host_set(int *knob, int v)
{
  pthread_mutex_lock(&H.mu);
  *knob = v;
  pthread_mutex_unlock(&H.mu);
}

static int host_get(const int *field)
{
  pthread_mutex_lock(&H.mu);
  int v = *field;
  pthread_mutex_unlock(&H.mu);
  return v;
}

/* Wait up to ms for *field >= want. */
static bool host_wait(const int *field, int want, int ms)
{
  for (int i = 0; i < ms / 5; i++) {
    if (host_get(field) >= want)
      return true;
    usleep(5000);
  }
  return host_get(field) >= want;
}

/* ---- calls ------------------------------------------------------------------ */

struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
};

static void on_done(struct tp_proc_call *c)
{
  struct waiter *w = c->arg;
  pthread_mutex_lock(&w->mu);
  w->done++;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static struct waiter W = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

static bool wait_done(int want, int ms)
{
  int64_t until = tp_mono_ms() + ms;
  pthread_mutex_lock(&W.mu);
  while (W.done < want && tp_mono_ms() < until) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 10 * 1000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&W.cv, &W.mu, &ts);
  }
  bool ok = W.done >= want;
  pthread_mutex_unlock(&W.mu);
  return ok;
}

static int done_count(void)
{
  pthread_mutex_lock(&W.mu);
  int d = W.done;
  pthread_mutex_unlock(&W.mu);
  return d;
}

static void call_init(struct tp_proc_call *c, enum tp_proc_kind kind, const char *ref, const char *pan)
{
  memset(c, 0, sizeof *c);
  c->kind = kind;
  snprintf(c->ref, sizeof c->ref, "%s", ref);
  snprintf(c->pan, sizeof c->pan, "%s", pan ? pan : "");
  c->amount = 1999;
  snprintf(c->currency, sizeof c->currency, "usd");
  c->exp_month = 12;
  c->exp_year = 2030;
  c->done = on_done;
  c->arg = &W;
}

static struct tp_connector conn;

static void link_up(int timeout_ms)
{
  W.done = 0;
  host_start();
  assert_int_equal(tp_iso8583_start(&conn, "isot", "127.0.0.1", H.port, timeout_ms, "TERM0001", "MERCHANT0000001"), 0);
  assert_true(host_wait(&H.signons, 1, 3000));
  /* signed on once the 0810 is read */
  for (int i = 0; i < 200; i++) {
    json_t *st = json_object();
    tp_iso8583_stats(&conn, st);
    bool on = json_is_true(json_object_get(st, "signed_on"));
    json_decref(st);
    if (on)
      return;
    usleep(5000);
  }
  fail_msg("link never signed on");
}

static void link_down(void)
{
  conn.ops->stop(conn.cls);
  host_stop();
}

/* ---- tests ------------------------------------------------------------------ */

static void test_signon_and_echo_are_seen_by_the_host(void **state)
{
  (void)state;
  tp_config_put("processor.isot", "echo_interval_ms", "50");
  link_up(1000);
  assert_int_equal(host_get(&H.signons), 1);
  assert_true(host_wait(&H.echos, 3, 3000));
  json_t *st = json_object();
  tp_iso8583_stats(&conn, st);
  assert_string_equal(json_string_value(json_object_get(st, "link")), "up");
  assert_true(json_integer_value(json_object_get(st, "last_echo_ms")) >= 0);
  json_decref(st);
  link_down();
  tp_config_reset();
}

static void test_approvals_and_declines_are_matched_by_stan(void **state)
{
  (void)state;
  link_up(2000);
  enum { N = 300 };
  static struct tp_proc_call calls[N];
  for (int i = 0; i < N; i++) {
    char ref[32];
    snprintf(ref, sizeof ref, "att_%d", i);
    call_init(&calls[i], TP_PROC_AUTHORIZE, ref, i % 3 == 0 ? "4000000000009995" : "4242424242424242");
    calls[i].capture = i % 2 == 0;
    assert_int_equal(conn.ops->submit(conn.cls, &calls[i]), 0);
  }
  assert_true(wait_done(N, 10000));
  for (int i = 0; i < N; i++) {
    char rrn[13];
    tp_iso_rrn(calls[i].ref, rrn);
    assert_string_equal(calls[i].processor_ref, rrn);
    if (i % 3 == 0) {
      assert_int_equal(calls[i].outcome, TP_OUT_DECLINED);
      assert_string_equal(calls[i].decline_code, "insufficient_funds");
    } else {
      assert_int_equal(calls[i].outcome, TP_OUT_APPROVED);
      assert_string_equal(calls[i].auth_code, "A12345");
    }
  }
  assert_int_equal(host_get(&H.auths), N / 2);
  assert_int_equal(host_get(&H.financials), N / 2);

  /* a partial approval is given back, never reported as approved */
  struct tp_proc_call part;
  call_init(&part, TP_PROC_AUTHORIZE, "att_partial", "5555555555554444");
  int revs = host_get(&H.reversals);
  assert_int_equal(conn.ops->submit(conn.cls, &part), 0);
  assert_true(wait_done(N + 1, 3000));
  /* (reported as the issuer's answer, insufficient_funds, its reversal
   * owed: it was a timeout, retried and cascaded) */
  assert_int_equal(part.outcome, TP_OUT_DECLINED);
  assert_string_equal(part.decline_code, "insufficient_funds");
  assert_true(part.reversing);
  assert_int_equal((int)strlen(part.orig_data), 20);
  assert_true(host_wait(&H.reversals, revs + 1, 2000));
  /* so is an approval on condition of an identity check (08): the issuer
   * holds the amount, which the payment cannot use */
  struct tp_proc_call hid;
  call_init(&hid, TP_PROC_AUTHORIZE, "att_honour_id", "5105105105105100");
  assert_int_equal(conn.ops->submit(conn.cls, &hid), 0);
  assert_true(wait_done(N + 2, 3000));
  assert_int_equal(hid.outcome, TP_OUT_ERROR);
  assert_string_equal(hid.decline_code, "processor_timeout");
  assert_false(hid.reversing);
  assert_true(host_wait(&H.reversals, revs + 2, 2000));

  /* capture (0220) and refund (0200 20xxxx) carry the authorization's RRN in 48 */
  struct tp_proc_call cap;
  call_init(&cap, TP_PROC_CAPTURE, "att_cap", NULL);
  snprintf(cap.orig_ref, sizeof cap.orig_ref, "att_1");
  int before = done_count();
  assert_int_equal(conn.ops->submit(conn.cls, &cap), 0);
  assert_true(wait_done(before + 1, 3000));
  assert_int_equal(cap.outcome, TP_OUT_APPROVED);
  assert_int_equal(host_get(&H.advices), 1);
  char rrn1[13];
  tp_iso_rrn("att_1", rrn1);
  pthread_mutex_lock(&H.mu);
  assert_string_equal(H.last_req_48, rrn1);
  assert_string_equal(H.last_pan_seen, "");
  pthread_mutex_unlock(&H.mu);
  link_down();
}

static void test_timed_out_authorization_is_reversed_and_late_approval_ignored(void **state)
{
  (void)state;
  link_up(300);
  pthread_mutex_lock(&H.mu);
  H.hold_auth = true;
  pthread_mutex_unlock(&H.mu);
  struct tp_proc_call c;
  call_init(&c, TP_PROC_AUTHORIZE, "att_timeout", "4242424242424242");
  int64_t t0 = tp_mono_ms();
  assert_int_equal(conn.ops->submit(conn.cls, &c), 0);
  assert_true(wait_done(1, 3000));
  int64_t took = tp_mono_ms() - t0;
  assert_true(took >= 300);
  assert_true(took < 2000);
  /* Reported only once the reversal was out, as a timeout: never approved. */
  assert_int_equal(c.outcome, TP_OUT_ERROR);
  assert_string_equal(c.decline_code, "processor_timeout");
  assert_true(host_wait(&H.reversals, 1, 2000));
  char rrn[13];
  tp_iso_rrn("att_timeout", rrn);
  pthread_mutex_lock(&H.mu);
  assert_string_equal(H.last_rev_37, rrn);
  assert_int_equal(strlen(H.last_rev_90), 42);
  /* original MTI and STAN, then its field 7 */
  assert_memory_equal(H.last_rev_90, "0100", 4);
  assert_memory_equal(H.last_rev_90 + 4, H.last_req_11, 6);
  assert_string_not_equal(H.last_rev_11, H.last_req_11); /* the reversal has its own STAN */
  H.hold_auth = false;
  pthread_mutex_unlock(&H.mu);
  /* The late 0110 changed nothing and the reversal was acknowledged. */
  usleep(200000);
  assert_int_equal(done_count(), 1);
  assert_int_equal(c.outcome, TP_OUT_ERROR);
  json_t *st = json_object();
  tp_iso8583_stats(&conn, st);
  assert_int_equal(json_integer_value(json_object_get(st, "reversals_pending")), 0);
  assert_int_equal(json_integer_value(json_object_get(st, "in_flight")), 0);
  json_decref(st);
  assert_int_equal(host_get(&H.repeats), 0);
  link_down();
}

static void test_link_lost_after_sending_reverses_on_the_next_link(void **state)
{
  (void)state;
  link_up(1500);
  pthread_mutex_lock(&H.mu);
  H.hold_auth = true;
  pthread_mutex_unlock(&H.mu);
  struct tp_proc_call c;
  call_init(&c, TP_PROC_AUTHORIZE, "att_link_lost", "4242424242424242");
  assert_int_equal(conn.ops->submit(conn.cls, &c), 0);
  assert_true(host_wait(&H.auths, 1, 2000));
  /* The request went out; the link dies before the answer. */
  pthread_mutex_lock(&H.mu);
  H.kick = true;
  H.held_stan[0] = '\0'; /* that connection's late answer can never come */
  H.hold_auth = false;
  pthread_mutex_unlock(&H.mu);
  assert_true(host_wait(&H.signons, 2, 3000));
  assert_true(host_wait(&H.reversals, 1, 3000));
  assert_true(wait_done(1, 3000));
  assert_int_equal(c.outcome, TP_OUT_ERROR);
  assert_string_equal(c.decline_code, "processor_timeout"); /* reversal out before the deadline */
  char rrn[13];
  tp_iso_rrn("att_link_lost", rrn);
  pthread_mutex_lock(&H.mu);
  assert_string_equal(H.last_rev_37, rrn);
  pthread_mutex_unlock(&H.mu);
  link_down();
}

static void test_unanswered_reversal_is_repeated_as_0401_then_given_up(void **state)
{
  (void)state;
  tp_config_put("processor.isot", "reversal_tries", "3");
  link_up(150);
  host_set(&H.ignore_reversals, 100);
  struct tp_proc_call c;
  call_init(&c, TP_PROC_VOID, "att_void", NULL);
  snprintf(c.orig_ref, sizeof c.orig_ref, "att_auth_to_void");
  assert_int_equal(conn.ops->submit(conn.cls, &c), 0);
  assert_true(wait_done(1, 2000));
  assert_int_equal(c.outcome, TP_OUT_ERROR);
  assert_string_equal(c.decline_code, "processor_timeout");
  assert_true(host_wait(&H.reversals, 3, 3000));
  usleep(600000); /* well past a fourth timeout: nothing more is sent */
  assert_int_equal(host_get(&H.reversals), 3);
  assert_int_equal(host_get(&H.repeats), 2);
  char rrn[13];
  tp_iso_rrn("att_auth_to_void", rrn);
  pthread_mutex_lock(&H.mu);
  assert_string_equal(H.last_rev_37, rrn);
  pthread_mutex_unlock(&H.mu);
  json_t *st = json_object();
  tp_iso8583_stats(&conn, st);
  assert_int_equal(json_integer_value(json_object_get(st, "reversals_pending")), 0);
  json_decref(st);
  assert_int_equal(done_count(), 1);
  link_down();
  tp_config_reset();
}

static void test_status_query_reverses_and_reports_not_found(void **state)
{
  (void)state;
  link_up(1000);
  struct tp_proc_call c;
  call_init(&c, TP_PROC_STATUS, "att_crashed", NULL);
  assert_int_equal(conn.ops->submit(conn.cls, &c), 0);
  assert_true(wait_done(1, 3000));
  assert_int_equal(c.outcome, TP_OUT_NOT_FOUND);
  char rrn[13];
  tp_iso_rrn("att_crashed", rrn);
  pthread_mutex_lock(&H.mu);
  assert_string_equal(H.last_rev_37, rrn);
  assert_memory_equal(H.last_rev_90, "0100000000", 10);
  pthread_mutex_unlock(&H.mu);
  link_down();
}

/* An owed reversal of a capture or refund (recovery's status query with
 * status_of) names that message in field 90 and the processing code, as the
 * connector's own reversal of it did; a sale's names 0200. */
static void test_status_query_names_capture_refund_and_sale(void **state)
{
  (void)state;
  link_up(1000);
  static const struct {
    enum tp_proc_kind of;
    bool capture;
    const char *mti, *proc;
  } cases[] = {{TP_PROC_CAPTURE, false, "0220", "000000"},
               {TP_PROC_REFUND, false, "0200", "200000"},
               {TP_PROC_AUTHORIZE, true, "0200", "000000"},
               {TP_PROC_AUTHORIZE, false, "0100", "000000"}};
  for (int i = 0; i < 4; i++) {
    struct tp_proc_call c;
    char ref[32], rrn[13];
    snprintf(ref, sizeof ref, "att_owed_kind_%d", i);
    call_init(&c, TP_PROC_STATUS, ref, NULL);
    c.status_of = cases[i].of;
    c.capture = cases[i].capture;
    assert_int_equal(conn.ops->submit(conn.cls, &c), 0);
    assert_true(wait_done(i + 1, 3000));
    assert_int_equal(c.outcome, TP_OUT_NOT_FOUND);
    tp_iso_rrn(ref, rrn);
    pthread_mutex_lock(&H.mu);
    assert_string_equal(H.last_rev_37, rrn);
    assert_memory_equal(H.last_rev_90, cases[i].mti, 4);
    assert_string_equal(H.last_rev_3, cases[i].proc);
    pthread_mutex_unlock(&H.mu);
  }
  link_down();
}

/* A status query (recovery's) for ref, submitted and waited for: the
 * connector's done count reaches done_after. */
static void status_query(struct tp_proc_call *c, const char *ref, int done_after)
{
  call_init(c, TP_PROC_STATUS, ref, NULL);
  assert_int_equal(conn.ops->submit(conn.cls, c), 0);
  assert_true(wait_done(done_after, 3000));
}

/* A 0410 that names another RRN in field 37 says nothing of this reversal:
 * the outcome stays unknown (an error, recovery asks again), never
 * "reversed"; the next, right answer settles it. */
static void test_a_reversal_answer_for_another_rrn_is_not_trusted(void **state)
{
  (void)state;
  link_up(1000);
  host_set(&H.misname_reversals, 1);
  struct tp_proc_call c;
  status_query(&c, "att_misnamed", 1);
  assert_int_equal(c.outcome, TP_OUT_ERROR);
  status_query(&c, "att_misnamed", 2);
  assert_int_equal(c.outcome, TP_OUT_NOT_FOUND);
  link_down();
}

/* What the gateway's recovery relies on to re-send an owed reversal: a
 * refused reversal reports an error at once and is not kept by the
 * connector (recovery owns the next try); the next one, acknowledged,
 * reports NOT_FOUND. Both name the original RRN. */
static void test_refused_status_reversal_is_reported_then_acknowledged(void **state)
{
  (void)state;
  link_up(1000);
  host_set(&H.refuse_reversals, 1);
  struct tp_proc_call c;
  status_query(&c, "att_owed", 1);
  assert_int_equal(c.outcome, TP_OUT_ERROR);
  assert_string_equal(c.decline_code, "processor_reversal_failed");
  usleep(1300000); /* past timeout_ms: a kept reversal would have been repeated */
  assert_int_equal(host_get(&H.reversals), 1);
  json_t *st = json_object();
  tp_iso8583_stats(&conn, st);
  assert_int_equal(json_integer_value(json_object_get(st, "reversals_pending")), 0);
  json_decref(st);
  status_query(&c, "att_owed", 2);
  assert_int_equal(c.outcome, TP_OUT_NOT_FOUND);
  assert_int_equal(host_get(&H.reversals), 2);
  char rrn[13];
  tp_iso_rrn("att_owed", rrn);
  pthread_mutex_lock(&H.mu);
  assert_string_equal(H.last_rev_37, rrn);
  pthread_mutex_unlock(&H.mu);
  link_down();
}

static void inject(const void *bytes, size_t n, bool close_after)
{
  pthread_mutex_lock(&H.mu);
  memcpy(H.inject, bytes, n);
  H.inject_len = n;
  H.close_after_inject = close_after;
  pthread_mutex_unlock(&H.mu);
  for (int i = 0; i < 200; i++) {
    pthread_mutex_lock(&H.mu);
    size_t left = H.inject_len;
    pthread_mutex_unlock(&H.mu);
    if (!left)
      return;
    usleep(5000);
  }
  fail_msg("host did not send the injected bytes");
}

static void pay_once(const char *ref, int want_done)
{
  struct tp_proc_call c;
  call_init(&c, TP_PROC_AUTHORIZE, ref, "4242424242424242");
  assert_int_equal(conn.ops->submit(conn.cls, &c), 0);
  assert_true(wait_done(want_done, 3000));
  assert_int_equal(c.outcome, TP_OUT_APPROVED);
}

static void wait_signed_on(void)
{
  for (int i = 0; i < 600; i++) {
    json_t *st = json_object();
    tp_iso8583_stats(&conn, st);
    bool on = json_is_true(json_object_get(st, "signed_on"));
    json_decref(st);
    if (on)
      return;
    usleep(5000);
  }
  fail_msg("link did not come back");
}

static void test_bad_and_truncated_messages_link_recovers(void **state)
{
  (void)state;
  link_up(1000);
  /* A well-framed but malformed message: dropped, the link stays. */
  static const uint8_t garbage[] = {0, 14, '0', '1', '1', '0', 0x20, 0, 0, 0, 0, 0, 0, 0, 'X', 'Y'};
  inject(garbage, sizeof garbage, false);
  /* An answer for a STAN nobody sent: dropped. */
  static const uint8_t stray[] = {0, 18, '0', '1', '1', '0', 0x00, 0x20, 0, 0, 0, 0, 0, 0, '9', '9', '9', '9', '9', '8'};
  inject(stray, sizeof stray, false);
  pay_once("att_after_garbage", 1);
  assert_int_equal(host_get(&H.connections), 1);

  /* A frame length of zero: the stream is out of step, the link restarts. */
  static const uint8_t zero[] = {0, 0};
  inject(zero, sizeof zero, false);
  assert_true(host_wait(&H.signons, 2, 3000));
  wait_signed_on();
  pay_once("att_after_reconnect", 2);

  /* A truncated message (frame announces 200 bytes, 10 arrive, then the
   * host hangs up): the link restarts and the next payment works. */
  static const uint8_t cut[] = {0, 200, '0', '1', '1', '0', 0x20, 0, 0, 0, 0, 0};
  inject(cut, sizeof cut, true);
  assert_true(host_wait(&H.signons, 3, 3000));
  wait_signed_on();
  pay_once("att_after_truncation", 3);
  assert_int_equal(host_get(&H.connections), 3);
  json_t *st = json_object();
  tp_iso8583_stats(&conn, st);
  assert_true(json_integer_value(json_object_get(st, "bad_messages")) >= 3);
  assert_int_equal(json_integer_value(json_object_get(st, "reconnects")), 2);
  json_decref(st);
  link_down();
}

/* The host signs off (0800, field 70 = 002): answered, and no financial
 * message is sent on that sign-on; the link signs on again and pays. */
static void test_a_host_sign_off_ends_the_sign_on(void **state)
{
  (void)state;
  link_up(1000);
  struct tp_iso_msg m;
  tp_iso_init(&m, "0800");
  assert_int_equal(tp_iso_set(&m, 7, "1206120000") | tp_iso_set(&m, 11, "424242") | tp_iso_set(&m, 70, "002"), 0);
  uint8_t buf[64];
  int n = tp_iso_frame(&m, buf, sizeof buf);
  tp_iso_free(&m);
  assert_true(n > 0);
  inject(buf, (size_t)n, false);
  assert_true(host_wait(&H.signons, 2, 3000)); /* a new connection, signed on again */
  wait_signed_on();
  pay_once("att_after_sign_off", 1);
  assert_int_equal(host_get(&H.connections), 2);
  link_down();
}

static void test_link_down_fails_fast_without_sending(void **state)
{
  (void)state;
  W.done = 0;
  /* Nothing listens on this port: the connector never signs on. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0};
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  socklen_t al = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &al);
  close(fd);
  assert_int_equal(tp_iso8583_start(&conn, "isod", "127.0.0.1", ntohs(a.sin_port), 500, "T1", "M1"), 0);
  struct tp_proc_call c;
  call_init(&c, TP_PROC_AUTHORIZE, "att_down", "4242424242424242");
  int64_t t0 = tp_mono_ms();
  assert_int_equal(conn.ops->submit(conn.cls, &c), 0);
  assert_true(wait_done(1, 2000));
  assert_true(tp_mono_ms() - t0 < 200);
  assert_int_equal(c.outcome, TP_OUT_ERROR);
  assert_string_equal(c.decline_code, "processor_link_down");
  conn.ops->stop(conn.cls);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_signon_and_echo_are_seen_by_the_host),
      cmocka_unit_test(test_approvals_and_declines_are_matched_by_stan),
      cmocka_unit_test(test_timed_out_authorization_is_reversed_and_late_approval_ignored),
      cmocka_unit_test(test_link_lost_after_sending_reverses_on_the_next_link),
      cmocka_unit_test(test_unanswered_reversal_is_repeated_as_0401_then_given_up),
      cmocka_unit_test(test_status_query_reverses_and_reports_not_found),
    cmocka_unit_test(test_a_reversal_answer_for_another_rrn_is_not_trusted),
    cmocka_unit_test(test_a_host_sign_off_ends_the_sign_on),
      cmocka_unit_test(test_status_query_names_capture_refund_and_sale),
      cmocka_unit_test(test_refused_status_reversal_is_reported_then_acknowledged),
      cmocka_unit_test(test_bad_and_truncated_messages_link_recovers),
      cmocka_unit_test(test_link_down_fails_fast_without_sending),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

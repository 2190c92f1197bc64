/* The sandbox processor: Stripe test-mode behaviour by card number, run on
 * its own thread so it completes through the same asynchronous path as a
 * networked processor. Deterministic, so a status query after a crash gives
 * the answer the original call gave. */
#include "connectors/connector.h"
#include "util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SANDBOX_QUEUE 65536

static const struct {
  const char *pan;
  const char *decline;
} test_cards[] = {
  {"4000000000000002", "generic_decline"},
  {"4000000000009995", "insufficient_funds"},
  {"4000000000009987", "lost_card"},
  {"4000000000009979", "stolen_card"},
  {"4000000000000069", "expired_card"},
  {"4000000000000127", "incorrect_cvc"},
  {"4000000000000119", "processing_error"},
  {"4100000000000019", "fraudulent"},
  {"4000000000000101", "incorrect_cvc"},
  {"4000000000006975", "card_velocity_exceeded"},
  {"4000000000000341", "generic_decline"},    /* attaches, but every charge is declined */
  {"4000008400001629", "generic_decline"},    /* 3-D Secure passes, then the issuer declines */
  {"4000008260003178", "insufficient_funds"}, /* the same, for want of funds */
  {"4000000000004954", "fraudulent"},         /* highest risk: blocked */
};

const char *tp_test_card_decline(const char *pan)
{
  for (size_t i = 0; i < sizeof test_cards / sizeof test_cards[0]; i++)
    if (strcmp(pan, test_cards[i].pan) == 0)
      return test_cards[i].decline;
  return "";
}

/* Stripe's 3-D Secure test cards and when their issuer asks. */
static const struct {
  const char *pan;
  enum { ALWAYS, UNLESS_SET_UP, ON_SESSION } when;
} three_ds_cards[] = {
  {"4000002760003184", ALWAYS},        /* every payment, however the card was saved */
  {"4000000000003220", ALWAYS},        /* 3-D Secure 2 required */
  {"4000000000003063", ALWAYS},        /* 3-D Secure required */
  {"4000008400001629", ALWAYS},        /* required, then declined */
  {"4000008260003178", ALWAYS},        /* required, then insufficient funds */
  {"4000002500003155", UNLESS_SET_UP}, /* off-session once set up with authentication */
  {"4000003800000446", ON_SESSION},    /* off-session payments never ask */
};

const char *tp_test_card_dispute(const char *pan)
{
  static const struct {
    const char *pan, *kind;
  } cards[] = {
    {"4000000000000259", "fraudulent"},
    {"4000000000002685", "product_not_received"},
    {"4000000000001976", "inquiry"},
  };
  for (size_t i = 0; i < sizeof cards / sizeof cards[0]; i++)
    if (strcmp(pan, cards[i].pan) == 0)
      return cards[i].kind;
  return "";
}

bool tp_test_card_refund_fails(const char *pan)
{
  return strcmp(pan, "4000000000005126") == 0;
}

const char *tp_test_card_risk(const char *pan, int *score)
{
  if (strcmp(pan, "4100000000000019") == 0 || strcmp(pan, "4000000000004954") == 0) {
    *score = 95;
    return "highest";
  }
  if (strcmp(pan, "4000000000009235") == 0) {
    *score = 65;
    return "elevated";
  }
  *score = 20;
  return "normal";
}

void tp_test_card_avs(const char *pan, const char **line1, const char **postal_code)
{
  static const struct {
    const char *pan, *line1, *postal_code;
  } avs[] = {
    {"4000000000000010", "fail", "fail"},
    {"4000000000000028", "fail", "pass"},
    {"4000000000000036", "pass", "fail"},
    {"4000000000000044", "unavailable", "unavailable"},
  };
  *line1 = *postal_code = "pass";
  for (size_t i = 0; i < sizeof avs / sizeof avs[0]; i++)
    if (strcmp(pan, avs[i].pan) == 0) {
      *line1 = avs[i].line1;
      *postal_code = avs[i].postal_code;
    }
}

bool tp_test_card_requires_3ds(const char *pan, bool off_session, bool set_up)
{
  for (size_t i = 0; i < sizeof three_ds_cards / sizeof three_ds_cards[0]; i++)
    if (strcmp(pan, three_ds_cards[i].pan) == 0)
      switch (three_ds_cards[i].when) {
      case ALWAYS:
        return true;
      case UNLESS_SET_UP:
        return !(off_session && set_up);
      case ON_SESSION:
        return !off_session;
      }
  return false;
}

struct sandbox {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct tp_proc_call **q;
  size_t head, len;
  bool stop;
};

static void decide(struct tp_proc_call *c)
{
  /* References derive from ours, so the same call always maps to the same ids. */
  snprintf(c->processor_ref, sizeof c->processor_ref, "sbx_%.56s", c->ref);
  if (c->kind != TP_PROC_AUTHORIZE && c->kind != TP_PROC_STATUS) {
    c->outcome = TP_OUT_APPROVED;
    return;
  }
  const char *d = tp_test_card_decline(c->pan);
  if (*d) {
    c->outcome = TP_OUT_DECLINED;
    tp_scopy(c->decline_code, sizeof c->decline_code, d);
  } else {
    c->outcome = TP_OUT_APPROVED;
    uint8_t h[32];
    tp_sha256(c->ref, strlen(c->ref), h);
    snprintf(c->auth_code, sizeof c->auth_code, "%06u", (unsigned)((h[0] << 16 | h[1] << 8 | h[2]) % 1000000));
  }
}

static void *sandbox_main(void *arg)
{
  struct sandbox *s = arg;
  for (;;) {
    pthread_mutex_lock(&s->mu);
    while (s->len == 0 && !s->stop)
      pthread_cond_wait(&s->cv, &s->mu);
    if (s->len == 0) {
      pthread_mutex_unlock(&s->mu);
      return NULL;
    }
    struct tp_proc_call *c = s->q[s->head];
    s->head = (s->head + 1) % SANDBOX_QUEUE;
    s->len--;
    pthread_mutex_unlock(&s->mu);
    decide(c);
    c->done(c);
  }
}

static int sandbox_submit(void *cls, struct tp_proc_call *c)
{
  struct sandbox *s = cls;
  pthread_mutex_lock(&s->mu);
  if (s->stop || s->len == SANDBOX_QUEUE) {
    pthread_mutex_unlock(&s->mu);
    return -1;
  }
  s->q[(s->head + s->len) % SANDBOX_QUEUE] = c;
  s->len++;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return 0;
}

static void sandbox_stop(void *cls)
{
  struct sandbox *s = cls;
  pthread_mutex_lock(&s->mu);
  s->stop = true;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  free(s->q);
  free(s);
}

static const struct tp_connector_ops sandbox_ops = {"sandbox", sandbox_submit, sandbox_stop};

int tp_sandbox_start(struct tp_connector *out, const char *name)
{
  struct sandbox *s = calloc(1, sizeof *s);
  if (!s)
    return -1;
  s->q = calloc(SANDBOX_QUEUE, sizeof *s->q);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  if (!s->q || pthread_create(&s->thread, NULL, sandbox_main, s) != 0) {
    free(s->q);
    free(s);
    return -1;
  }
  pthread_setname_np(s->thread, "tp-sandbox");
  tp_scopy(out->name, sizeof out->name, name);
  out->ops = &sandbox_ops;
  out->cls = s;
  return 0;
}

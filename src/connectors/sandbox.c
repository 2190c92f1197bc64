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

/* Stripe's test cards, one row per card with everything its issuer does
 * differently from approving (read by the sandbox, the simulator and the
 * gateway's charge builder): the decline, when it asks for 3-D Secure, the
 * fraud risk, the address checks, the dispute its cardholder opens and
 * whether its refunds fail. A card not listed approves, asks nothing, is of
 * normal risk and passes every check. */
enum three_ds { NO_3DS, ALWAYS, UNLESS_SET_UP, ON_SESSION };
static const struct test_card {
  const char *pan;
  const char *decline;
  enum three_ds three_ds;
  const char *risk; /* NULL: normal */
  const char *avs_line1, *avs_zip; /* NULL: pass */
  const char *dispute;
  bool decline_needs_cvc; /* declines (the CVC check fails) only when a CVC was given */
  bool refund_fails;
  bool bypass_pending; /* its charges' funds are available at once */
  bool charges_only;   /* declines charges only: a card check (SetupIntent) passes */
  bool no_3ds;         /* not enrolled in 3-D Secure, or its brand has none: never challenged */
  bool three_ds_error; /* supported, not required: an attempt ends in a processing error */
} test_cards[] = {
  {.pan = "4000000000000002", .decline = "generic_decline"},
  {.pan = "4000000000009995", .decline = "insufficient_funds"},
  {.pan = "4000000000009987", .decline = "lost_card"},
  {.pan = "4000000000009979", .decline = "stolen_card"},
  {.pan = "4000000000000069", .decline = "expired_card"},
  {.pan = "4000000000000127", .decline = "incorrect_cvc"},
  {.pan = "4000000000000119", .decline = "processing_error"},
  {.pan = "4100000000000019", .decline = "fraudulent", .risk = "highest"},
  {.pan = "4000000000004954", .decline = "fraudulent", .risk = "highest"},
  {.pan = "4000000000009235", .risk = "elevated"},
  {.pan = "4000000000000101", .decline = "incorrect_cvc", .decline_needs_cvc = true}, /* only with a CVC */
  {.pan = "4000000000006975", .decline = "card_velocity_exceeded"},
  {.pan = "4000000000000341", .decline = "generic_decline", .charges_only = true}, /* attaches, every charge declined */
  /* 3-D Secure */
  {.pan = "4000002760003184", .three_ds = ALWAYS}, /* every payment, however the card was saved */
  {.pan = "4000000000003220", .three_ds = ALWAYS}, /* 3-D Secure 2 required */
  {.pan = "4000000000003063", .three_ds = ALWAYS}, /* 3-D Secure required */
  {.pan = "4000008400000027", .three_ds = ALWAYS}, /* 3-D Secure required, US-issued */
  {.pan = "4000008400001629", .decline = "generic_decline", .three_ds = ALWAYS}, /* required, then declined */
  /* Stripe: asks for one-time payments, and every payment is declined
   * insufficient_funds "even after being successfully authenticated or
   * previously set up": set up (the card check passes), its off-session
   * payments decline without asking */
  {.pan = "4000008260003178", .decline = "insufficient_funds", .three_ds = UNLESS_SET_UP, .charges_only = true},
  {.pan = "4000002500003155", .three_ds = UNLESS_SET_UP}, /* off-session once set up with authentication */
  {.pan = "4000003800000446", .three_ds = ON_SESSION}, /* off-session payments never ask */
  /* required, but the lookup fails: declined (card_declined) without a challenge */
  {.pan = "4000008400001280", .decline = "generic_decline", .no_3ds = true},
  {.pan = "4242424242424242", .no_3ds = true}, /* supported, the card not enrolled */
  {.pan = "378282246310005", .no_3ds = true},  /* no 3-D Secure on this card */
  {.pan = "4000000000003097", .three_ds_error = true},
  /* address checks */
  {.pan = "4000000000000010", .avs_line1 = "fail", .avs_zip = "fail"},
  {.pan = "4000000000000028", .avs_line1 = "fail", .avs_zip = "pass"},
  {.pan = "4000000000000036", .avs_line1 = "pass", .avs_zip = "fail"},
  {.pan = "4000000000000044", .avs_line1 = "unavailable", .avs_zip = "unavailable"},
  /* after the payment */
  {.pan = "4000000000000259", .dispute = "fraudulent"},
  {.pan = "4000000000002685", .dispute = "product_not_received"},
  {.pan = "4000000000001976", .dispute = "inquiry"},
  {.pan = "4000000000005423", .dispute = "early_fraud_warning"}, /* the issuer warns; no dispute */
  {.pan = "4000000000005126", .refund_fails = true},
  {.pan = "4000000000000077", .bypass_pending = true},
};

static const struct test_card *test_card(const char *pan)
{
  static const struct test_card none = {.pan = ""};
  for (size_t i = 0; pan && i < sizeof test_cards / sizeof test_cards[0]; i++)
    if (strcmp(pan, test_cards[i].pan) == 0)
      return &test_cards[i];
  return &none;
}

bool tp_card_lapsed(int exp_month, int exp_year, time_t now)
{
  if (exp_month < 1 || exp_month > 12 || exp_year <= 0)
    return false;
  struct tm tm;
  gmtime_r(&now, &tm);
  int y = tm.tm_year + 1900, m = tm.tm_mon + 1;
  return exp_year < y || (exp_year == y && exp_month < m);
}

const char *tp_test_card_decline(const char *pan, bool cvc)
{
  const struct test_card *t = test_card(pan);
  return t->decline && (cvc || !t->decline_needs_cvc) ? t->decline : "";
}

const char *tp_test_card_check_decline(const char *pan, bool cvc)
{
  return test_card(pan)->charges_only ? "" : tp_test_card_decline(pan, cvc);
}

const char *tp_test_card_dispute(const char *pan)
{
  const char *d = test_card(pan)->dispute;
  return d ? d : "";
}

bool tp_test_card_refund_fails(const char *pan)
{
  return test_card(pan)->refund_fails;
}

bool tp_test_card_bypass_pending(const char *pan)
{
  return test_card(pan)->bypass_pending;
}

const char *tp_test_card_risk(const char *pan, int *score)
{
  const char *risk = test_card(pan)->risk;
  if (!risk) {
    *score = 20;
    return "normal";
  }
  *score = strcmp(risk, "highest") == 0 ? 95 : 65;
  return risk;
}

void tp_test_card_avs(const char *pan, const char **line1, const char **postal_code)
{
  const struct test_card *c = test_card(pan);
  *line1 = c->avs_line1 ? c->avs_line1 : "pass";
  *postal_code = c->avs_zip ? c->avs_zip : "pass";
}

bool tp_test_card_3ds_error(const char *pan)
{
  return test_card(pan)->three_ds_error;
}

bool tp_test_card_no_3ds(const char *pan)
{
  return test_card(pan)->no_3ds;
}

bool tp_test_card_requires_3ds(const char *pan, bool off_session, bool set_up)
{
  switch (test_card(pan)->three_ds) {
  case ALWAYS:
    return true;
  case UNLESS_SET_UP:
    return !(off_session && set_up);
  case ON_SESSION:
    return !off_session;
  case NO_3DS:
    break;
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
  const char *d = tp_test_card_decline(c->pan, !c->no_cvc);
  if (tp_card_lapsed(c->exp_month, c->exp_year, time(NULL)))
    d = "expired_card";
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

/* A payment-processor connector: a small set of callbacks, asynchronous.
 * The gateway writes the attempt (with its idempotency reference) before
 * calling submit; the connector calls c->done exactly once, on any thread. */
#ifndef TP_CONNECTOR_H
#define TP_CONNECTOR_H
#include <stdbool.h>
#include <stdint.h>

enum tp_proc_kind { TP_PROC_AUTHORIZE, TP_PROC_CAPTURE, TP_PROC_VOID, TP_PROC_REFUND, TP_PROC_STATUS };

enum tp_proc_outcome {
  TP_OUT_APPROVED,
  TP_OUT_DECLINED,   /* hard or soft decline: decline_code says which */
  TP_OUT_ERROR,      /* transport/processor failure: outcome unknown or not done */
  TP_OUT_NOT_FOUND,  /* status query: the processor never saw this reference */
};

struct tp_proc_call {
  enum tp_proc_kind kind;
  char ref[64];           /* our idempotency reference for this call */
  char orig_ref[64];      /* the authorization's reference, for capture/void/refund */
  int64_t amount;
  char currency[4];
  bool capture;           /* authorize and capture in one message */
  /* card data: in memory only, wiped after the call */
  char pan[20];
  int exp_month, exp_year;
  char cvc[5];
  /* result */
  enum tp_proc_outcome outcome;
  char decline_code[48];
  char auth_code[16];
  char processor_ref[64];
  void (*done)(struct tp_proc_call *c);
  void *arg;
};

struct tp_connector_ops {
  const char *type;
  int (*submit)(void *cls, struct tp_proc_call *c);
  void (*stop)(void *cls);
};

struct tp_connector {
  char name[64];
  const struct tp_connector_ops *ops;
  void *cls;
};

/* The in-process sandbox processor (the embedded default). */
int tp_sandbox_start(struct tp_connector *out, const char *name);
/* The Stripe test-card table shared by the sandbox and the simulator:
 * decline code for a PAN, "" when it approves. */
const char *tp_test_card_decline(const char *pan);
/* Does the issuer of this test card require 3-D Secure? */
bool tp_test_card_requires_3ds(const char *pan);
#endif

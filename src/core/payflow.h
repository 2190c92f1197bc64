/* The processor-call pipeline every money movement goes through:
 *   1. commit the attempt (state "sent", our idempotency reference) together
 *      with the caller's write-ahead objects;
 *   2. send it through the connector, asynchronously;
 *   3. build the outcome (objects, ledger entries, events, the reply) and
 *      commit it in one transaction with the idempotency record;
 *   4. answer the suspended request.
 * Recovery runs the same steps 2-3 for attempts left "sent" by a crash, with
 * a status query instead of the original call, so nothing is sent twice. */
#ifndef TP_PAYFLOW_H
#define TP_PAYFLOW_H
#include <jansson.h>

#include "api/http.h"
#include "connectors/connector.h"
#include "core/card.h"
#include "core/router.h"
#include "store/store.h"
#include "util.h"

struct tp_pay;
typedef void (*tp_pay_outcome_fn)(struct tp_pay *p, struct tp_cs *cs);

struct tp_pay {
  struct tp_req *r;          /* NULL during recovery */
  struct tp_req *shape;      /* recovery: a stand-in request with the attempt's reply_opts (expand[],
                                Stripe-Version) for the reply stored under the client's key; else NULL */
  struct tp_merchant m;
  json_t *pi, *charge, *refund, *pm; /* owned */
  json_t *txn;               /* the balance transaction posted, when the reply may expand it; owned */
  json_t *params;            /* request params (for expand), borrowed */
  struct tp_attempt att;
  struct tp_proc_call call;
  char lock_id[80];
  char pm_lock_id[80];       /* the PaymentMethod being saved to a customer, released with p */
  char cus_lock_id[80];      /* that customer's, released with p */
  char cancellation_reason[64];
  bool three_ds_done;        /* the payment passed a 3-D Secure challenge */
  bool route_breaker_open;   /* routing: a processor that takes the payment has its breaker open */
  int64_t retry_after_ms;    /* the failed call's processor asked to wait this long (Retry-After) */
  bool pm_made_here;         /* the PaymentMethod was made by this confirmation (payment_method_data, a test id) */
  bool reply_charge;         /* the Charges API: answer the charge (or an error naming it), not the PaymentIntent */
  bool screened;             /* the authorization was declined by screening, never sent */
  bool capture_set;          /* a capture's own changes (metadata, descriptors ...) were written ahead (tp_capture_set_*) */
  tp_pay_outcome_fn outcome;
  /* a browser flow (3-D Secure) answers with this page instead */
  unsigned redirect_status;
  char *redirect_body;
  char *return_url;         /* the 3-D Secure page's: the redirect is built at the outcome */
  size_t redirect_len;
  /* the reply the outcome built */
  unsigned status;
  char *body;
  /* orchestration of an authorization (see docs/routing.md) */
  bool orchestrated;         /* routed: retries and cascade apply */
  bool recovering;           /* a recovery status query, no live request */
  bool resolving;            /* the call in flight is a status query for att */
  bool not_sent;             /* the last call never left (breaker, queue) */
  struct tp_proc *admitted;  /* next_step took a half-open probe slot of this processor for the next call
                                (send_call asks no more while it is live; given back if the call never goes) */
  uint64_t admitted_slot;    /* that slot's half-open period (tp_proc_reserve) */
  bool sent_any;             /* some call of this payment was handed to a connector */
  bool fencing;              /* the call in flight voids att's reference, which the processor never saw */
  int fence_tries;           /* voids sent for att's reference */
  int status_tries;          /* status queries for att's reference that failed */
  void (*resend)(struct tp_pay *p); /* what resend_later sends again */
  char prev_att[64];         /* the finished attempt committed with att's write-ahead */
  struct tp_route_plan route;
  char route_names[TP_ROUTE_MAX][64];
  size_t route_i;            /* the processor of att in route */
  int tries;                 /* calls to route_i so far */
  int calls;                 /* calls of this payment so far */
  int64_t deadline_ms;       /* monotonic */
  int64_t sent_us;           /* when the current call went out */
  char brand[32], country[4];
  char last_code[48];        /* the error code of the call being resolved */
  /* an operator settling the attempt (tp_payflow_resolve): answered with
   * the attempt once the outcome commits, which carries this audit entry */
  struct tp_req *op_req;
  json_t *op_audit;          /* owned */
};

/* The processor used when the registry has none (set by the registry). */
extern struct tp_connector *tp_default_connector;

struct tp_pay *tp_pay_new(struct tp_req *r, const struct tp_merchant *m);
/* A failed charge of pi with pm (both borrowed) that no processor call
 * made, built as tp_charge_new builds one (m's statement descriptor; a
 * card source, or the card of a Charges API token, as its source): the issuer's soft decline `decline` of an off-session payment it
 * wants authenticated (Stripe records that as a failed charge with
 * failure_code authentication_required). Its outcome is the issuer's;
 * failure_code and failure_message are left to the caller. */
json_t *tp_charge_declined_unsent(const struct tp_merchant *m, const json_t *pi, const json_t *pm, const char *pan,
                                  const char *decline, bool reply_charge, bool pm_made_here);
void tp_pay_free(struct tp_pay *p);
/* Fill the attempt for p (kind "authorize" etc.), taking the client's
 * idempotency key from the request. */
void tp_pay_attempt(struct tp_pay *p, const char *kind, int64_t amount, const char *currency);
/* Run the pipeline; cs holds the caller's write-ahead objects (may be empty)
 * and is consumed. The request must be suspended by the caller before. */
void tp_pay_run(struct tp_pay *p, struct tp_cs *cs);

/* Outcome builders. */
void tp_outcome_authorize(struct tp_pay *p, struct tp_cs *cs);
/* A capture's own changes to its PaymentIntent and charge (metadata,
 * statement descriptors, receipt_email, transfer_group, payment_details):
 * written ahead with the attempt (the meta row capture_set:<attempt>), so
 * an outcome learnt by recovery keeps them as a live one does, and dropped
 * with the outcome. set is {"payment_intent":{...}, "charge":{...}}. */
void tp_capture_set_write(struct tp_pay *p, struct tp_cs *cs, const json_t *set);
void tp_outcome_capture(struct tp_pay *p, struct tp_cs *cs);
void tp_outcome_void(struct tp_pay *p, struct tp_cs *cs);
/* The void of an authorization that lapsed: canceled whatever the answer. */
void tp_outcome_expire(struct tp_pay *p, struct tp_cs *cs);
/* [authorizations] expire_after_seconds: how long an uncaptured
 * authorization is held (Stripe: 7 days). */
int64_t tp_authorization_ttl(void);
void tp_outcome_refund(struct tp_pay *p, struct tp_cs *cs);
/* The void that releases an uncaptured charge refunded (p->refund). */
void tp_outcome_void_refund(struct tp_pay *p, struct tp_cs *cs);

/* Set p's reply from a JSON object (expanded with p->params when a request). */
void tp_pay_reply(struct tp_pay *p, unsigned status, json_t *obj);
/* The same, given obj's compact text already written (owned; NULL: dump
 * obj): used as it is unless the request expands something. */
void tp_pay_reply_text(struct tp_pay *p, unsigned status, json_t *obj, char *text);

/* Resolve every attempt left "sent" (start-up), then keep resolving stale
 * ones on a timer ([routing] recovery_interval_ms). Returns how many. */
int tp_recover(void);
/* An operator settles attempt a (state "sent" or "reversal_pending", of
 * r's merchant) with what its processor says happened, when the gateway
 * cannot find out itself (the fence or the reversal is refused, the
 * processor is gone): processed (with its authorization code and
 * reference, may be empty) or not. The outcome is the one recovery would
 * commit for that answer (charge and ledger, or the payment failed; the
 * client's idempotent retry gets it), in one change set with an audit
 * entry (actor, reason), and r is answered with the attempt. Returns 0
 * when started (r suspended), else the error to answer (nothing changed):
 * TP_ERR_ATTEMPT_IN_FLIGHT when a call or a request holds it now,
 * TP_ERR_ATTEMPT_UNEXPECTED_STATE when it is settled or processed is not
 * possible for its state. */
int tp_payflow_resolve(struct tp_req *r, const struct tp_attempt *a, bool processed, const char *auth_code,
                       const char *processor_ref, const char *reason);

/* Stop the retry/recovery timer; pending retries finish with an error. */
void tp_payflow_stop(void);
/* Attempts of this process in flight now (tests, metrics). */
size_t tp_payflow_inflight(void);
/* Attempts of processor left in state reversal_pending (a timed-out ISO
 * authorization, capture or refund whose reversal recovery still owes), as
 * of the last recovery scan. */
size_t tp_payflow_reversals_pending(const char *processor);

/* Charge object helpers. */
/* A PaymentIntent's capture_method or setup_future_usage as it applies to a
 * card: payment_method_options[card][field] when set, else the top-level
 * field (NULL when neither is). */
const char *tp_pi_card_option(const json_t *pi, const char *field);

json_t *tp_charge_new(const struct tp_pay *p, bool approved);
/* ch's calculated_statement_descriptor from the descriptor and suffix of
 * from (the PaymentIntent, or the charge itself once a capture set them). */
void tp_charge_set_descriptor(json_t *ch, const json_t *from, const char *merchant_name);
/* One money movement: amount (minor units of currency; > 0 into the
 * merchant's balance) from source (a charge, refund or dispute id), of a
 * balance transaction type ("charge", "refund", "refund_failure",
 * "adjustment"), less a fee the processor keeps (a dispute's; 0 for none,
 * < 0 when it is given back), with the balance transaction's description
 * (NULL: null) and the fee's. */
struct tp_posting {
  const char *merchant, *processor, *currency, *source, *type, *description, *fee_description;
  int64_t amount, fee;
};
/* Post a balanced ledger transaction and its balance transaction for a
 * refund (amount < 0), a refund's failure or a dispute adjustment, on the
 * merchant's available balance (only charges wait as pending): both sides
 * move by amount - fee. Its id goes to txn, and the object to *obj_out (the
 * caller's) when obj_out is not NULL. */
void tp_ledger_post(struct tp_cs *cs, const struct tp_posting *po, char txn[TP_ID_MAX], json_t **obj_out);
/* [balance] available_after_seconds (read by tp_recover). */
int64_t tp_balance_available_after(void);
/* The card field an issuer's decline code is about, as Stripe names it in
 * the error's param ("cvc" for incorrect_cvc, "exp_month" for expired_card,
 * "number" for incorrect_number), or NULL. */
const char *tp_decline_param(const char *code);

/* How long a suspended payment request can last at most (deadline + the slowest processor's timeout). */
int64_t tp_payflow_longest_ms(void);

/* A capture's, void's or refund's call names the authorization of charge
 * (its attempt's reference; for ISO 8583, the original data elements). */
void tp_call_target(struct tp_proc_call *c, const json_t *charge);

#endif

/* A payment-processor connector: a small set of callbacks, asynchronous.
 * The gateway writes the attempt (with its idempotency reference) before
 * calling submit; the connector calls c->done exactly once, on any thread. */
#ifndef TP_CONNECTOR_H
#define TP_CONNECTOR_H
#include <stdbool.h>
#include <time.h>
#include <stddef.h>
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
  /* ISO 8583: the original data elements (MTI, STAN, field 7: 20 digits) of
   * the message that was answered, set by the link on an authorization's
   * answer, and given back with the void that reverses it (field 90); ""
   * when unknown */
  char orig_data[24];
  char payment[64];       /* the PaymentIntent id when known ("" otherwise), for the processor's records */
  int64_t amount;
  char currency[4];
  bool capture;           /* authorize and capture in one message */
  /* TP_PROC_STATUS only: the kind of call it asks about (authorize when
   * left zero), so a reversing link names the right original message */
  enum tp_proc_kind status_of;
  /* card data: in memory only, wiped after the call */
  char pan[20];
  int exp_month, exp_year;
  char cvc[5];
  /* no CVC was ever given for this card (none now, none with its token or
   * when it was saved): an issuer has none to check. Not card data. */
  bool no_cvc;
  /* result */
  enum tp_proc_outcome outcome;
  char decline_code[48];
  char auth_code[16];
  char processor_ref[64];
  /* ISO 8583: the host approved something we cannot take (a partial
   * approval) and the link is reversing it: the decline reported stands,
   * and the reversal (named by orig_data) is owed until acknowledged */
  bool reversing;
  /* the processor asked not to be called again before this many ms
   * (Retry-After on a 429 or 503, RFC 9110 10.2.3); 0 when it did not */
  int64_t retry_after_ms;
  /* REST/JSON: the approval named its amount and currency and both were
   * the ones asked (an answer may leave them out: "checked when the
   * answer has them"), so it confirms the amount, not only the outcome */
  bool amount_checked;
  /* ISO 8583: the reversal was answered 25 (no record of the call), not
   * 00: the call may yet reach the host, so recovery asks once more
   * before it believes it (payflow.c, unlocated_first) */
  bool unlocated;
  void (*done)(struct tp_proc_call *c);
  void *arg;
};

/* Set by the payment flow: a call a connector had given up on and had
 * reversed stands at the processor after all (an ISO 8583 approval that
 * came after its reversal was answered 25): the attempt whose reference is
 * ref owes a reversal again, durably. Called on the connector's thread. */
typedef void (*tp_reversal_owed_fn)(const char *ref);
void tp_connector_on_reversal_owed(tp_reversal_owed_fn fn);

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
/* TLS settings of an https processor: each path may be NULL or "" (ca_file
 * empty = the system trust store; no client certificate). */
struct tp_tls_opts {
  const char *ca_file;      /* PEM bundle the processor's certificate must chain to */
  const char *client_cert;  /* PEM client certificate for mutual TLS */
  const char *client_key;   /* its PEM private key */
};
/* Set peer and host verification, TLS >= 1.2 and the opts on a curl easy
 * handle (a CURL *, untyped here so this header needs no curl include). */
void tp_curl_tls_setup(void *easy, const struct tp_tls_opts *tls);
/* A REST/JSON processor's answer (HTTP status, body) to call c, as c's
 * outcome, decline_code, auth_code and processor_ref. Whatever the bytes,
 * the codes come out as lower-case words and the references as printable
 * ASCII (they reach our objects and logs). */
void tp_restjson_interpret(struct tp_proc_call *c, long http, const char *body, size_t len);
/* A Retry-After value in ms from now_s (0: none, unreadable or past; at most an hour). */
int64_t tp_retry_after_ms(const char *v, int64_t now_s);
/* A REST/JSON processor at base_url (http or https; certificates verified),
 * Bearer api_key (may be empty), per-call timeout, TLS settings (may be
 * NULL) (docs/processors.md). */
int tp_restjson_start(struct tp_connector *out, const char *name, const char *base_url, const char *api_key,
                      int timeout_ms, const struct tp_tls_opts *tls);
/* An ISO 8583 acquirer host at host:port over one persistent TCP link;
 * terminal_id / merchant_id are fields 41 / 42 (docs/iso8583.md; extra
 * settings are read from [processor.NAME]). */
int tp_iso8583_start(struct tp_connector *out, const char *name, const char *host, int port, int timeout_ms,
                     const char *terminal_id, const char *merchant_id);
/* Where ISO 8583 links keep each terminal's STAN mark (the data
 * directory), so that a restart does not reuse the STANs sent before it;
 * before tp_iso8583_start. NULL or "": none (a start from the clock). */
void tp_iso8583_state_dir(const char *dir);
struct json_t;
/* Link state of an ISO 8583 connector (link, signed_on, in_flight,
 * reversals_pending, last_echo_ms ...) added to out; no-op for other types. */
void tp_iso8583_stats(const struct tp_connector *c, struct json_t *out);
/* Whether an ISO 8583 link has signed on (false for another connector). */
bool tp_iso8583_signed_on(const struct tp_connector *c);
/* The original data elements (MTI, STAN, field 7: 20 digits) the ISO 8583
 * message of an authorization, capture or refund call will carry, fixed
 * now, before its write-ahead, and given back to submit in c->orig_data:
 * a reversal sent after a crash names the message as the host has it.
 * -1 for another connector type or call kind. */
int tp_iso8583_reserve(const struct tp_connector *c, enum tp_proc_kind kind, bool capture, char out[24]);
/* The Stripe test-card table shared by the sandbox and the simulator:
 * decline code for a PAN, "" when it approves. cvc: a CVC was given for the
 * card (the CVC-check card 4000000000000101 declines only then, as Stripe's
 * does). */
const char *tp_test_card_decline(const char *pan, bool cvc);
/* ... when the card is only checked, not charged (a SetupIntent): 4000000000000341 attaches, then declines charges. */
const char *tp_test_card_check_decline(const char *pan, bool cvc);
/* Does the issuer of this test card require 3-D Secure, for a payment made
 * off_session or not, with a card set up for off-session payments by an
 * authenticated payment (set_up) or not? */
bool tp_test_card_requires_3ds(const char *pan, bool off_session, bool set_up);
/* A card 3-D Secure cannot be run on (Stripe's 4242424242424242, not
 * enrolled; 378282246310005, not supported): request_three_d_secure any or
 * challenge goes on without a challenge, as on Stripe. */
bool tp_test_card_no_3ds(const char *pan);
/* Stripe's 4000000000003097: 3-D Secure supported, not required; asked for
 * (request_three_d_secure any), the attempt fails with a processing error. */
bool tp_test_card_3ds_error(const char *pan);
/* The dispute the cardholder of a test card opens once a charge is
 * captured: "fraudulent" or "product_not_received" (a chargeback),
 * "inquiry" (a retrieval request, no funds withdrawn), "early_fraud_warning"
 * (the issuer warns of fraud; no dispute), "" for none. */
const char *tp_test_card_dispute(const char *pan);
/* A test card whose captured funds skip the pending balance (Stripe's
 * 4000000000000077): available at once. */
bool tp_test_card_bypass_pending(const char *pan);
/* A test card whose refunds fail after they succeeded (the card was
 * closed): Stripe's 4000000000005126. */
bool tp_test_card_refund_fails(const char *pan);
/* The fraud risk of a test card: "normal" (score 20), "elevated" (65) or
 * "highest" (95: Stripe's default rules block it). */
const char *tp_test_card_risk(const char *pan, int *score);
/* The issuer's view of an expiry: (exp_month, exp_year) before the current
 * UTC month at now. A card saved before it lapsed is declined expired_card
 * by the sandbox and the simulator, as an issuer would (0 0: not known). */
bool tp_card_lapsed(int exp_month, int exp_year, time_t now);
/* The issuer's address checks of a test card, for an address it is given:
 * "pass", "fail" or "unavailable" for line1 and for the postal code. */
void tp_test_card_avs(const char *pan, const char **line1, const char **postal_code);
#endif

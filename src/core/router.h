/* The router: for one payment, an ordered list of the processors to try.
 * Pure engine logic (no sockets, no SQL): the caller describes each processor
 * as a candidate (support, breaker, fee, latency), the router applies the
 * merchant rules ([route.NAME] sections), the rule's volume split and a
 * learned success probability per processor x brand x currency (Thompson
 * sampling on discounted Beta posteriors), and scores what is left:
 *   score = p * amount - fee - amount * p50_ms / TP_ROUTE_LATENCY_DIV
 * See docs/routing.md. */
#ifndef TP_ROUTER_H
#define TP_ROUTER_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TP_ROUTE_MAX 16          /* processors per route (and per rule) */
#define TP_ROUTE_CANDIDATES 64   /* processors scored per payment; the best TP_ROUTE_MAX form the route */
#define TP_ROUTE_MD_MAX 8        /* metadata.KEY match keys per rule */
#define TP_ROUTE_RULES_MAX 64
#define TP_ROUTE_LATENCY_DIV 100000.0 /* 1% of the amount per second of p50 */
#define TP_ROUTE_JSON_MAX 256    /* attempts.route holds at most 255 bytes */

/* What the router needs to know about a payment. */
struct tp_route_pay {
  const char *payment_id;  /* split hash key */
  const char *merchant;
  const char *currency;    /* lower case ISO 4217 */
  const char *brand;       /* visa, mastercard ... */
  const char *country;     /* card country, may be "" */
  int64_t amount;          /* minor units */
  const json_t *metadata;  /* PaymentIntent metadata, may be NULL */
};

/* One processor as seen for this payment. */
struct tp_route_cand {
  const char *name;
  bool supports;           /* brand and currency */
  bool open;               /* breaker open: never routed */
  int64_t fee;             /* minor units for this amount */
  int64_t p50_us;          /* 0 when unknown */
  int weight;              /* higher first on a tie */
  int priority;            /* lower first on a tie */
};

struct tp_route_entry {
  size_t cand;             /* index into the candidates */
  double score;            /* expected value in minor units */
  double p;                /* posterior mean success probability */
  const char *why;         /* "split", "bandit", "only" */
};

struct tp_route_plan {
  char rule[64];           /* matching rule, "" when none */
  size_t n;
  struct tp_route_entry e[TP_ROUTE_MAX];
};

/* (Re)load the [route.*] rules and [routing] settings from the config.
 * Every key is checked (proc_known, when given, says whether a name in
 * processors or split is a configured processor); -1, after one
 * route_config_invalid log line, on the first bad one. */
int tp_router_load(bool (*proc_known)(const char *name));
/* Number of loaded rules (tests). */
size_t tp_router_rules(void);
/* Order the eligible candidates for a payment. Returns the count (0: none). */
size_t tp_router_route(const struct tp_route_pay *pay, const struct tp_route_cand *c, size_t nc, struct tp_route_plan *out);
/* The route reason of entry i as compact JSON (at most TP_ROUTE_JSON_MAX-1 bytes). */
void tp_router_reason(const struct tp_route_plan *rt, size_t i, char *out, size_t cap);

/* Feed an issuer outcome (approved or declined by the issuer) to the bandit.
 * Transport errors belong to the breaker and must not be fed here. */
void tp_router_learn(const char *proc, const char *brand, const char *currency, bool approved);
/* The posterior mean for an arm (0.5 before any observation). */
double tp_router_p(const char *proc, const char *brand, const char *currency);
/* Forget everything learned; seed the sampler (tests: deterministic runs). */
void tp_router_reset(uint64_t seed);

/* Decline classification. Soft: worth retrying (maybe elsewhere). Hard: the
 * issuer said no for a reason another processor cannot change. */
bool tp_decline_is_soft(const char *decline_code);
/* Which split member a payment id falls into: a stable value in [0, 100). */
unsigned tp_route_bucket(const char *payment_id);
#endif

/* The router: rule matching, volume splits, the bandit, breaker exclusion,
 * decline classes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "core/router.h"

#include <stdio.h>
#include <string.h>

static struct tp_route_cand cands3[] = {
  {"a", true, false, 0, 0, 1, 1},
  {"b", true, false, 0, 0, 1, 1},
  {"c", true, false, 0, 0, 1, 1},
};

static struct tp_route_pay base_pay(void)
{
  struct tp_route_pay p = {"pi_1", "acct_1", "usd", "visa", "us", 1000, NULL};
  return p;
}

static const char *first(const struct tp_route_pay *pay, const struct tp_route_cand *c, size_t nc,
                         struct tp_route_plan *rt)
{
  return tp_router_route(pay, c, nc, rt) ? c[rt->e[0].cand].name : NULL;
}

static int setup(void **state)
{
  (void)state;
  tp_config_reset();
  tp_router_reset(42);
  return 0;
}

static void test_no_rule_routes_to_every_processor(void **state)
{
  (void)state;
  assert_int_equal(tp_router_load(NULL), 0);
  struct tp_route_plan rt;
  struct tp_route_pay pay = base_pay();
  assert_int_equal(tp_router_route(&pay, cands3, 3, &rt), 3);
  assert_string_equal(rt.rule, "");
}

static void test_rule_matches_on_every_key(void **state)
{
  (void)state;
  tp_config_put("route.eu", "merchant", "acct_1");
  tp_config_put("route.eu", "currency", "EUR");
  tp_config_put("route.eu", "brand", "mastercard");
  tp_config_put("route.eu", "country", "DE");
  tp_config_put("route.eu", "amount_min", "100");
  tp_config_put("route.eu", "amount_max", "5000");
  tp_config_put("route.eu", "metadata.tier", "gold");
  tp_config_put("route.eu", "processors", "c");
  tp_config_put("route.any", "merchant", "*");
  tp_config_put("route.any", "processors", "a, b");
  assert_int_equal(tp_router_load(NULL), 0);
  assert_int_equal(tp_router_rules(), 2);
  json_t *md = json_pack("{s:s}", "tier", "gold");
  struct tp_route_pay pay = {"pi_x", "acct_1", "eur", "mastercard", "de", 1000, md};
  struct tp_route_plan rt;
  assert_string_equal(first(&pay, cands3, 3, &rt), "c");
  assert_string_equal(rt.rule, "eu");
  assert_int_equal(rt.n, 1);
  /* Each key alone failing sends the payment to the catch-all rule. */
  struct tp_route_pay v[7];
  for (int i = 0; i < 7; i++)
    v[i] = pay;
  v[0].merchant = "acct_2";
  v[1].currency = "usd";
  v[2].brand = "visa";
  v[3].country = "fr";
  v[4].amount = 99;
  v[5].amount = 5001;
  json_t *md2 = json_pack("{s:s}", "tier", "silver");
  v[6].metadata = md2;
  for (int i = 0; i < 7; i++) {
    assert_int_equal(tp_router_route(&v[i], cands3, 3, &rt), 2);
    assert_string_equal(rt.rule, "any");
    for (size_t k = 0; k < rt.n; k++)
      assert_string_not_equal(cands3[rt.e[k].cand].name, "c");
  }
  /* Bounds are inclusive. */
  v[4].amount = 100;
  assert_string_equal(first(&v[4], cands3, 3, &rt), "c");
  v[5].amount = 5000;
  assert_string_equal(first(&v[5], cands3, 3, &rt), "c");
  json_decref(md);
  json_decref(md2);
}

static void test_split_is_exact_over_volume_and_stable(void **state)
{
  (void)state;
  tp_config_put("route.split", "processors", "a,b,c");
  tp_config_put("route.split", "split", "a:70,b:20,c:10");
  assert_int_equal(tp_router_load(NULL), 0);
  int count[3] = {0, 0, 0};
  struct tp_route_plan rt;
  for (int i = 0; i < 10000; i++) {
    char id[32];
    snprintf(id, sizeof id, "pi_%08d", i);
    struct tp_route_pay pay = base_pay();
    pay.payment_id = id;
    assert_int_equal(tp_router_route(&pay, cands3, 3, &rt), 3);
    assert_string_equal(rt.e[0].why, "split");
    count[rt.e[0].cand]++;
    /* Stable: the same id always lands on the same processor. */
    struct tp_route_plan rt2;
    tp_router_route(&pay, cands3, 3, &rt2);
    assert_int_equal(rt2.e[0].cand, rt.e[0].cand);
  }
  assert_in_range(count[0], 6800, 7200);
  assert_in_range(count[1], 1800, 2200);
  assert_in_range(count[2], 800, 1200);
}

/* Names in a rule are read as [processor.NAME] sections are: in any case. */
static void test_rule_names_ignore_case(void **state)
{
  (void)state;
  tp_config_put("route.one", "processors", "C");
  tp_config_put("route.one", "split", "C:100");
  assert_int_equal(tp_router_load(NULL), 0);
  struct tp_route_plan rt;
  struct tp_route_pay pay = base_pay();
  assert_int_equal(tp_router_route(&pay, cands3, 3, &rt), 1);
  assert_string_equal(cands3[rt.e[0].cand].name, "c");
  assert_string_equal(rt.e[0].why, "split");
}

/* A bad rule fails the load, with no rule kept from it. */
static void test_bad_rules_fail_the_load(void **state)
{
  (void)state;
  static const char *const bad[][2] = {{"amount_max", "12.50"}, {"currency", "usd,eur"}, {"brand", "vsa"},
                                       {"split", "a:50,b:40"}, {"strategy", "fastest"}, {"procesors", "a"},
                                       {"metadata.x", ""}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    tp_config_reset();
    tp_config_put("route.r", bad[i][0], bad[i][1]);
    if (strcmp(bad[i][0], "metadata.x") == 0)
      tp_config_put("route.r", "metadata.", "y"); /* an empty key */
    assert_int_equal(tp_router_load(NULL), -1);
    assert_int_equal(tp_router_rules(), 0);
  }
  /* a split member the rule's processors leave out never takes its share */
  tp_config_reset();
  tp_config_put("route.r", "processors", "a");
  tp_config_put("route.r", "split", "b:100");
  assert_int_equal(tp_router_load(NULL), -1);
  tp_config_reset();
  tp_config_put("route.r", "processors", "a,b");
  tp_config_put("route.r", "split", "b:100");
  assert_int_equal(tp_router_load(NULL), 0);
}

static void test_breaker_open_and_unsupported_are_excluded(void **state)
{
  (void)state;
  assert_int_equal(tp_router_load(NULL), 0);
  struct tp_route_cand c[3] = {cands3[0], cands3[1], cands3[2]};
  c[0].open = true;
  c[2].supports = false;
  struct tp_route_pay pay = base_pay();
  struct tp_route_plan rt;
  assert_int_equal(tp_router_route(&pay, c, 3, &rt), 1);
  assert_string_equal(c[rt.e[0].cand].name, "b");
  assert_string_equal(rt.e[0].why, "only");
  c[1].open = true;
  assert_int_equal(tp_router_route(&pay, c, 3, &rt), 0);
}

/* Simulate payments: the router picks, the "issuer" answers with the true
 * rate of the chosen processor; returns the share routed to `want` over the
 * last half of the run. */
static double run_bandit(const double rate[2], int n, const char *want)
{
  static uint64_t lcg = 12345;
  struct tp_route_cand c[2] = {{"a", true, false, 0, 0, 1, 1}, {"b", true, false, 0, 0, 1, 1}};
  int chosen_want = 0, counted = 0;
  for (int i = 0; i < n; i++) {
    struct tp_route_pay pay = base_pay();
    struct tp_route_plan rt;
    tp_router_route(&pay, c, 2, &rt);
    size_t k = rt.e[0].cand;
    lcg = lcg * 6364136223846793005ULL + 1442695040888963407ULL;
    double u = (double)(lcg >> 11) / 9007199254740992.0;
    tp_router_learn(c[k].name, "visa", "usd", u < rate[k]);
    if (i >= n / 2) {
      counted++;
      chosen_want += strcmp(c[k].name, want) == 0;
    }
  }
  return (double)chosen_want / counted;
}

static void test_bandit_converges_and_readapts_after_drift(void **state)
{
  (void)state;
  assert_int_equal(tp_router_load(NULL), 0);
  double r1[2] = {0.95, 0.70};
  assert_true(run_bandit(r1, 2000, "a") > 0.85);
  assert_true(tp_router_p("a", "visa", "usd") > 0.85);
  /* Drift: a's issuers start declining; the discounted posterior follows. */
  double r2[2] = {0.50, 0.90};
  assert_true(run_bandit(r2, 3000, "b") > 0.80);
  assert_true(tp_router_p("a", "visa", "usd") < 0.75);
  /* Arms are per brand x currency: nothing learned for eur. */
  assert_true(tp_router_p("a", "visa", "eur") > 0.49 && tp_router_p("a", "visa", "eur") < 0.51);
}

static void test_fee_and_latency_fold_into_the_score(void **state)
{
  (void)state;
  assert_int_equal(tp_router_load(NULL), 0);
  for (int i = 0; i < 400; i++) {
    tp_router_learn("a", "visa", "usd", i % 10 != 0); /* 90% */
    tp_router_learn("b", "visa", "usd", i % 10 != 0);
  }
  struct tp_route_cand c[2] = {{"a", true, false, 300, 0, 1, 1}, {"b", true, false, 30, 0, 1, 1}};
  struct tp_route_pay pay = base_pay();
  int b_first = 0;
  for (int i = 0; i < 200; i++) {
    struct tp_route_plan rt;
    tp_router_route(&pay, c, 2, &rt);
    b_first += rt.e[0].cand == 1;
  }
  assert_true(b_first > 190);
  /* Same fee, b is 10 s slower at p50 (a 10% penalty): a wins. */
  c[0].fee = 30;
  c[1].p50_us = 10000000;
  int a_first = 0;
  for (int i = 0; i < 200; i++) {
    struct tp_route_plan rt;
    tp_router_route(&pay, c, 2, &rt);
    a_first += rt.e[0].cand == 0;
  }
  assert_true(a_first > 190);
}

static void test_route_reason_is_compact_json(void **state)
{
  (void)state;
  tp_config_put("route.eu", "processors", "a,b");
  assert_int_equal(tp_router_load(NULL), 0);
  struct tp_route_pay pay = base_pay();
  struct tp_route_plan rt;
  tp_router_route(&pay, cands3, 3, &rt);
  char buf[TP_ROUTE_JSON_MAX];
  tp_router_reason(&rt, 1, buf, sizeof buf);
  json_error_t err;
  json_t *j = json_loads(buf, 0, &err);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "rule")), "eu");
  assert_int_equal(json_integer_value(json_object_get(j, "rank")), 2);
  assert_true(strlen(buf) < 256);
  json_decref(j);
}

static void test_ordered_strategy_keeps_merchant_order(void **state)
{
  (void)state;
  tp_config_put("route.o", "processors", "c,a");
  tp_config_put("route.o", "strategy", "ordered");
  assert_int_equal(tp_router_load(NULL), 0);
  for (int i = 0; i < 50; i++)
    tp_router_learn("a", "visa", "usd", true);
  struct tp_route_pay pay = base_pay();
  struct tp_route_plan rt;
  assert_int_equal(tp_router_route(&pay, cands3, 3, &rt), 2);
  assert_string_equal(cands3[rt.e[0].cand].name, "c");
  assert_string_equal(cands3[rt.e[1].cand].name, "a");
  assert_string_equal(rt.e[0].why, "rule");
}

static void test_hard_and_soft_declines(void **state)
{
  (void)state;
  const char *soft[] = {"processing_error", "issuer_not_available", "try_again_later", "reenter_transaction"};
  const char *hard[] = {"stolen_card", "lost_card",  "insufficient_funds", "incorrect_cvc",
                        "expired_card", "fraudulent", "do_not_honor",       "generic_decline"};
  for (size_t i = 0; i < sizeof soft / sizeof soft[0]; i++)
    assert_true(tp_decline_is_soft(soft[i]));
  for (size_t i = 0; i < sizeof hard / sizeof hard[0]; i++)
    assert_false(tp_decline_is_soft(hard[i]));
  assert_false(tp_decline_is_soft(""));
  assert_false(tp_decline_is_soft(NULL));
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup(test_no_rule_routes_to_every_processor, setup),
    cmocka_unit_test_setup(test_rule_matches_on_every_key, setup),
    cmocka_unit_test_setup(test_split_is_exact_over_volume_and_stable, setup),
    cmocka_unit_test_setup(test_rule_names_ignore_case, setup),
    cmocka_unit_test_setup(test_bad_rules_fail_the_load, setup),
    cmocka_unit_test_setup(test_breaker_open_and_unsupported_are_excluded, setup),
    cmocka_unit_test_setup(test_bandit_converges_and_readapts_after_drift, setup),
    cmocka_unit_test_setup(test_fee_and_latency_fold_into_the_score, setup),
    cmocka_unit_test_setup(test_route_reason_is_compact_json, setup),
    cmocka_unit_test_setup(test_ordered_strategy_keeps_merchant_order, setup),
    cmocka_unit_test_setup(test_hard_and_soft_declines, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

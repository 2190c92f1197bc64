/* Route -> scope mapping, scope lists, and the token bucket / failure
 * window arithmetic (with an explicit clock). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "sec/ratelimit.h"
#include "sec/scopes.h"

static void test_every_route_family_maps_to_its_scope(void **state)
{
  (void)state;
  static const struct { const char *m, *path; unsigned want; } cases[] = {
    {"GET", "/v1/payment_intents", TP_SCOPE_PAYMENTS_READ},
    {"GET", "/v1/payment_intents/{id}", TP_SCOPE_PAYMENTS_READ},
    {"POST", "/v1/payment_intents", TP_SCOPE_PAYMENTS_WRITE},
    {"POST", "/v1/payment_intents/{id}/capture", TP_SCOPE_PAYMENTS_WRITE},
    {"POST", "/v1/refunds", TP_SCOPE_REFUNDS_WRITE},
    {"POST", "/v1/refunds/{id}", TP_SCOPE_REFUNDS_WRITE},
    {"GET", "/v1/refunds", TP_SCOPE_PAYMENTS_READ},
    {"POST", "/v1/customers", TP_SCOPE_CUSTOMERS_WRITE},
    {"DELETE", "/v1/customers/{id}", TP_SCOPE_CUSTOMERS_WRITE},
    {"GET", "/v1/customers/{id}", TP_SCOPE_PAYMENTS_READ},
    {"POST", "/v1/payment_methods/{id}/attach", TP_SCOPE_CUSTOMERS_WRITE},
    {"GET", "/v1/balance", TP_SCOPE_REPORTS_READ},
    {"GET", "/v1/balance_transactions/{id}", TP_SCOPE_REPORTS_READ},
    /* the older refund of a charge answers the whole charge */
    {"POST", "/v1/charges/{id}/refund", TP_SCOPE_REFUNDS_WRITE | TP_SCOPE_PAYMENTS_READ},
    {"POST", "/v1/charges/{id}/refunds", TP_SCOPE_REFUNDS_WRITE},
    {"GET", "/v1/reports/settlement", TP_SCOPE_REPORTS_READ},
    {"GET", "/v1/turnpike/anything_new", TP_SCOPE_ADMIN},
    {"POST", "/v1/turnpike/log_level", TP_SCOPE_ADMIN},
    {"POST", "/v1/webhook_endpoints", TP_SCOPE_ADMIN | TP_SCOPE_PAYMENTS_READ},
    {"GET", "/v1/webhook_endpoints/we_1/deliveries", TP_SCOPE_ADMIN | TP_SCOPE_PAYMENTS_READ},
    {"GET", "/v1/events", TP_SCOPE_PAYMENTS_READ},
    {"POST", "/v1/something_new", TP_SCOPE_PAYMENTS_WRITE},
    /* A prefix must end at a path segment. */
    {"GET", "/v1/balanced_things", TP_SCOPE_PAYMENTS_READ},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    unsigned got = tp_scope_required(cases[i].m, cases[i].path);
    if (got != cases[i].want)
      fail_msg("%s %s: got %s", cases[i].m, cases[i].path, tp_scope_name(got));
  }
}

static void test_scope_lists_parse_and_format_canonically(void **state)
{
  (void)state;
  bool ok;
  unsigned m = tp_scopes_parse("refunds:write  payments:read", &ok);
  assert_true(ok);
  assert_int_equal(m, TP_SCOPE_PAYMENTS_READ | TP_SCOPE_REFUNDS_WRITE);
  char buf[128];
  tp_scopes_format(m, buf, sizeof buf);
  assert_string_equal(buf, "payments:read refunds:write");
  tp_scopes_parse("payments:read payments:delete", &ok);
  assert_false(ok);
  tp_scopes_parse("payments:readx", &ok);
  assert_false(ok);
  /* writing payments includes reading them (Stripe's Write includes Read);
   * no other write includes a read */
  assert_int_equal(tp_scopes_parse("payments:write", &ok), TP_SCOPE_PAYMENTS_WRITE | TP_SCOPE_PAYMENTS_READ);
  assert_int_equal(tp_scopes_parse("customers:write refunds:write", &ok),
                   TP_SCOPE_CUSTOMERS_WRITE | TP_SCOPE_REFUNDS_WRITE);
  tp_scopes_format(TP_SCOPE_ALL, buf, sizeof buf);
  assert_string_equal(buf, "payments:read payments:write refunds:write customers:write reports:read admin");
  assert_null(tp_scope_name(TP_SCOPE_PAYMENTS_READ | TP_SCOPE_ADMIN));
}

static void test_bucket_allows_burst_then_refills_at_rate(void **state)
{
  (void)state;
  tp_ratelimit_configure(2, 3, 0, 60); /* 2/s, burst 3 */
  int64_t t = 1000000;
  for (int i = 0; i < 3; i++)
    assert_int_equal(tp_ratelimit_take("k:a", t), 0);
  int wait = tp_ratelimit_take("k:a", t);
  assert_int_equal(wait, 1);
  /* Another key has its own bucket. */
  assert_int_equal(tp_ratelimit_take("k:b", t), 0);
  /* 500 ms at 2/s gives one token back. */
  assert_int_equal(tp_ratelimit_take("k:a", t + 500), 0);
  assert_true(tp_ratelimit_take("k:a", t + 500) >= 1);
  /* A long pause refills to the burst only. */
  t += 100000;
  for (int i = 0; i < 3; i++)
    assert_int_equal(tp_ratelimit_take("k:a", t), 0);
  assert_true(tp_ratelimit_take("k:a", t) >= 1);
}

static void test_rate_zero_disables_the_bucket(void **state)
{
  (void)state;
  tp_ratelimit_configure(0, 1, 0, 60);
  for (int i = 0; i < 1000; i++)
    assert_int_equal(tp_ratelimit_take("k:a", 5), 0);
}

static void test_auth_failures_block_an_address_for_the_window(void **state)
{
  (void)state;
  tp_ratelimit_configure(0, 1, 3, 10);
  int64_t t = 50000;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(tp_ratelimit_auth_blocked("10.0.0.1", t), 0);
    tp_ratelimit_auth_failed("10.0.0.1", t);
  }
  int w = tp_ratelimit_auth_blocked("10.0.0.1", t + 1000);
  assert_int_equal(w, 9);
  assert_int_equal(tp_ratelimit_auth_blocked("10.0.0.2", t), 0);
  assert_int_equal(tp_ratelimit_auth_blocked("10.0.0.1", t + 10000), 0);
}

/* An IPv6 /64 is one client: its addresses share the block; another /64,
 * and IPv4 (also mapped into IPv6), stay apart. */
static void test_an_ipv6_64_is_one_bucket(void **state)
{
  (void)state;
  char b[80];
  tp_ratelimit_addr_bucket("2001:db8:1:2:aaaa::1", b, sizeof b);
  assert_string_equal(b, "2001:db8:1:2::/64");
  tp_ratelimit_addr_bucket("::ffff:10.1.2.3", b, sizeof b);
  assert_string_equal(b, "::ffff:10.1.2.3");
  tp_ratelimit_addr_bucket("10.1.2.3", b, sizeof b);
  assert_string_equal(b, "10.1.2.3");
  tp_ratelimit_configure(0, 1, 3, 10);
  int64_t t = 90000;
  for (int i = 0; i < 3; i++)
    tp_ratelimit_auth_failed(i % 2 ? "2001:db8:5:6::1" : "2001:db8:5:6:ffff::2", t);
  assert_int_not_equal(tp_ratelimit_auth_blocked("2001:db8:5:6:1234:5678:9abc:def0", t + 1), 0);
  assert_int_equal(tp_ratelimit_auth_blocked("2001:db8:5:7::1", t + 1), 0);
}

static void test_tables_stay_bounded_under_many_keys(void **state)
{
  (void)state;
  tp_ratelimit_configure(1, 1, 1, 60);
  char id[32];
  /* Far more ids than slots: no growth, and the newest id still works. */
  for (int i = 0; i < 20 * TP_RL_SETS * TP_RL_WAYS; i++) {
    snprintf(id, sizeof id, "k:%d", i);
    assert_int_equal(tp_ratelimit_take(id, 1000 + i), 0);
    tp_ratelimit_auth_failed(id, 1000 + i);
  }
  assert_true(tp_ratelimit_take(id, 1000 + 20 * TP_RL_SETS * TP_RL_WAYS) >= 1);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_every_route_family_maps_to_its_scope),
    cmocka_unit_test(test_scope_lists_parse_and_format_canonically),
    cmocka_unit_test(test_bucket_allows_burst_then_refills_at_rate),
    cmocka_unit_test(test_rate_zero_disables_the_bucket),
    cmocka_unit_test(test_auth_failures_block_an_address_for_the_window),
    cmocka_unit_test(test_an_ipv6_64_is_one_bucket),
    cmocka_unit_test(test_tables_stay_bounded_under_many_keys),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

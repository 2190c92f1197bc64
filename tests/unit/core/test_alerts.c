/* The dynamic-baseline detector on synthetic series: steady noise stays
 * quiet, a step opens within open_after buckets, recovery resolves, a slow
 * drift is learned instead of alerted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/alerts.h"

static const struct tp_detector_cfg CFG = {
    .alpha = 0.1, .k = 4, .min_abs = 0.1, .dev_floor = 0.01, .warmup = 10, .open_after = 3, .resolve_after = 5};

/* Deterministic noise in [-amp, amp]. */
static double noise(unsigned *seed, double amp)
{
  *seed = *seed * 1103515245u + 12345u;
  return ((double)((*seed >> 8) % 20001) / 10000.0 - 1.0) * amp;
}

static int run(struct tp_detector *d, const double *v, int n, int *opened_at, int *resolved_at)
{
  int events = 0;
  for (int i = 0; i < n; i++) {
    enum tp_detect w = tp_detector_step(d, &CFG, v[i]);
    if (w == TP_DETECT_OPENED) {
      if (opened_at && *opened_at < 0)
        *opened_at = i;
      events++;
    } else if (w == TP_DETECT_RESOLVED) {
      if (resolved_at && *resolved_at < 0)
        *resolved_at = i;
      events++;
    }
  }
  return events;
}

/* An open alert whose scope then gets too few samples to judge (a
 * processor used only while another is in trouble) resolves after
 * resolve_after quiet buckets, and the quiet buckets teach nothing. */
static void test_an_open_alert_resolves_when_its_scope_goes_quiet(void **state)
{
  (void)state;
  struct tp_detector d;
  memset(&d, 0, sizeof d);
  for (int i = 0; i < CFG.warmup; i++)
    assert_int_equal(tp_detector_step(&d, &CFG, 0.05), TP_DETECT_NONE);
  int opened = -1;
  for (int i = 0; i < CFG.open_after; i++)
    if (tp_detector_step(&d, &CFG, 0.9) == TP_DETECT_OPENED)
      opened = i;
  assert_int_equal(opened, CFG.open_after - 1);
  double mean = d.mean;
  int quiet = TP_ALERT_QUIET_FACTOR * CFG.resolve_after;
  for (int i = 0; i < quiet - 1; i++)
    assert_int_equal(tp_detector_quiet(&d, &CFG), TP_DETECT_NONE);
  assert_int_equal(tp_detector_quiet(&d, &CFG), TP_DETECT_RESOLVED);
  assert_false(d.open);
  assert_true(d.mean == mean);
  assert_int_equal(tp_detector_quiet(&d, &CFG), TP_DETECT_NONE); /* closed: quiet says nothing */
}

/* A breaker that half-opens between open spells (a bucket down, then a few
 * quiet ones with a probe too few to judge, again and again): the alert
 * opens across the quiet buckets and stays open while it goes on. */
static void test_a_breaker_cycling_through_half_open_opens_and_stays_open(void **state)
{
  (void)state;
  struct tp_detector d;
  memset(&d, 0, sizeof d);
  for (int i = 0; i < CFG.warmup; i++)
    tp_detector_step(&d, &CFG, 0.01);
  int opened = -1, resolved = -1;
  for (int cycle = 0; cycle < 50; cycle++) {
    if (tp_detector_down(&d, &CFG) == TP_DETECT_OPENED && opened < 0)
      opened = cycle;
    for (int q = 0; q < 8; q++)
      if (tp_detector_quiet(&d, &CFG) == TP_DETECT_RESOLVED)
        resolved = cycle;
  }
  assert_int_equal(opened, CFG.open_after - 1);
  assert_int_equal(resolved, -1);
  assert_true(d.open);
}

/* A scope down from the start (its breaker open before a baseline was
 * learned) opens an alert after open_after buckets instead of learning the
 * outage as its normal; its recovery, still in warm-up, resolves it. */
static void test_an_outage_from_the_start_opens_and_is_not_learned(void **state)
{
  (void)state;
  struct tp_detector d;
  memset(&d, 0, sizeof d);
  int opened = -1;
  for (int i = 0; i < 20; i++)
    if (tp_detector_down(&d, &CFG) == TP_DETECT_OPENED)
      opened = i;
  assert_int_equal(opened, CFG.open_after - 1);
  assert_int_equal(d.seen, 0);
  int resolved = -1;
  for (int i = 0; i < 10; i++)
    if (tp_detector_step(&d, &CFG, 0.0) == TP_DETECT_RESOLVED)
      resolved = i;
  assert_int_equal(resolved, CFG.resolve_after - 1);
  assert_false(d.open);
  /* learned from then on: a later outage opens again */
  for (int i = 0; i < CFG.warmup; i++)
    tp_detector_step(&d, &CFG, 0.01);
  opened = -1;
  for (int i = 0; i < CFG.open_after; i++)
    if (tp_detector_down(&d, &CFG) == TP_DETECT_OPENED)
      opened = i;
  assert_int_equal(opened, CFG.open_after - 1);
}

static void test_steady_noise_never_alerts(void **state)
{
  (void)state;
  struct tp_detector d;
  memset(&d, 0, sizeof d);
  double v[5000];
  unsigned seed = 42;
  for (int i = 0; i < 5000; i++)
    v[i] = 0.05 + noise(&seed, 0.04); /* a 5% decline rate, +-4 points */
  assert_int_equal(run(&d, v, 5000, NULL, NULL), 0);
  assert_false(d.open);
  assert_true(d.mean > 0.03 && d.mean < 0.07); /* EWMA of the noise, within ~3 sigma */
}

static void test_step_opens_within_open_after_and_recovery_resolves(void **state)
{
  (void)state;
  struct tp_detector d;
  memset(&d, 0, sizeof d);
  double v[200];
  unsigned seed = 7;
  for (int i = 0; i < 200; i++)
    v[i] = (i >= 100 && i < 150 ? 0.6 : 0.05) + noise(&seed, 0.02);
  int opened = -1, resolved = -1;
  int events = run(&d, v, 200, &opened, &resolved);
  assert_int_equal(events, 2);
  assert_int_equal(opened, 100 + CFG.open_after - 1);
  assert_int_equal(resolved, 150 + CFG.resolve_after - 1);
  assert_false(d.open);
  /* the spike did not leak into the baseline */
  assert_true(d.mean < 0.1);
}

static void test_short_blip_shorter_than_open_after_is_ignored(void **state)
{
  (void)state;
  struct tp_detector d;
  memset(&d, 0, sizeof d);
  double v[60];
  for (int i = 0; i < 60; i++)
    v[i] = (i == 30 || i == 31) ? 0.9 : 0.02;
  assert_int_equal(run(&d, v, 60, NULL, NULL), 0);
}

static void test_slow_drift_is_learned_not_alerted(void **state)
{
  (void)state;
  struct tp_detector d;
  memset(&d, 0, sizeof d);
  enum { N = 3000 };
  static double v[N];
  unsigned seed = 9;
  for (int i = 0; i < N; i++)
    v[i] = 0.05 + 0.5 * i / N + noise(&seed, 0.01); /* 5% to 55% over 3000 buckets */
  assert_int_equal(run(&d, v, N, NULL, NULL), 0);
  assert_true(d.mean > 0.45);
}

static void test_small_absolute_rise_on_a_flat_series_is_not_an_alert(void **state)
{
  (void)state;
  struct tp_detector d;
  memset(&d, 0, sizeof d);
  double v[100];
  for (int i = 0; i < 100; i++)
    v[i] = i < 50 ? 0.0 : 0.05; /* far above a zero deviation, but under min_abs */
  assert_int_equal(run(&d, v, 100, NULL, NULL), 0);
}

static void test_no_alert_during_warmup(void **state)
{
  (void)state;
  struct tp_detector d;
  memset(&d, 0, sizeof d);
  double v[10] = {0, 0, 0, 0, 1, 1, 1, 1, 1, 1};
  assert_int_equal(run(&d, v, CFG.warmup, NULL, NULL), 0);
}

/* The charge-event scanner gives what the JSON parser gives, on the shape
 * events have and on shapes they could have: escapes in skipped strings
 * and keys, brackets and quotes inside strings, nested arrays, whitespace;
 * a wanted value with an escape goes to the parser. */
static void test_charge_fields_scan_agrees_with_the_parser(void **state)
{
  (void)state;
  static const struct {
    const char *json;
    const char *currency, *brand, *processor, *failure;
    long long amount;
    bool parsed;
  } cases[] = {
    {"{\"id\":\"evt_1\",\"data\":{\"object\":{\"id\":\"ch_1\",\"amount\":1999,\"currency\":\"usd\","
     "\"failure_code\":null,\"payment_method_details\":{\"card\":{\"brand\":\"visa\",\"last4\":\"4242\"},"
     "\"type\":\"card\"},\"turnpike\":{\"processor\":\"sandbox\"}}},\"type\":\"charge.succeeded\"}",
     "usd", "visa", "sandbox", "", 1999, false},
    {"{ \"data\" : { \"object\" : { \"description\":\"a \\\"quoted\\\" }{][ \\\\\", \"metadata\":{\"k\\\"\":\"}\"},"
     "\"refunds\":[[1,{\"a\":\"]\"}],\"[\"], \"amount\" : 50 , \"currency\":\"jpy\",\"failure_code\":\"card_declined\","
     "\"payment_method_details\":{\"card\":{\"brand\":\"amex\"}},\"turnpike\":{\"processor\":\"iso-1\"} } } }",
     "jpy", "amex", "iso-1", "card_declined", 50, false},
    {"{\"data\":{\"object\":{\"amount\":7,\"currency\":\"e\\u0075r\",\"turnpike\":{\"processor\":\"p\"}}}}",
     "eur", "", "p", "", 7, true},
    {"{\"data\":{\"object\":{\"currency\":\"usd\"}}", "", "", "", "", 0, true}, /* truncated: neither reads it */
    {"{\"data\":{\"object\":{}}}", "", "", "", "", 0, false},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct tp_charge_fields f;
    tp_alerts_charge_fields(cases[i].json, strlen(cases[i].json), &f);
    assert_string_equal(f.currency, cases[i].currency);
    assert_string_equal(f.brand, cases[i].brand);
    assert_string_equal(f.processor, cases[i].processor);
    assert_string_equal(f.failure, cases[i].failure);
    assert_int_equal(f.amount, cases[i].amount);
    assert_int_equal(f.parsed, cases[i].parsed);
  }
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_charge_fields_scan_agrees_with_the_parser),
      cmocka_unit_test(test_steady_noise_never_alerts),
      cmocka_unit_test(test_step_opens_within_open_after_and_recovery_resolves),
      cmocka_unit_test(test_short_blip_shorter_than_open_after_is_ignored),
      cmocka_unit_test(test_slow_drift_is_learned_not_alerted),
      cmocka_unit_test(test_small_absolute_rise_on_a_flat_series_is_not_an_alert),
      cmocka_unit_test(test_no_alert_during_warmup),
      cmocka_unit_test(test_an_open_alert_resolves_when_its_scope_goes_quiet),
      cmocka_unit_test(test_a_breaker_cycling_through_half_open_opens_and_stays_open),
      cmocka_unit_test(test_an_outage_from_the_start_opens_and_is_not_learned),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

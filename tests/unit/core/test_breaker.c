/* Circuit breaker state machine (with an injected clock), processor fees
 * (exact, half-even, per currency) and [processor.*] config errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "config.h"
#include "core/breaker.h"
#include "core/procs.h"

static struct tp_breaker_cfg cfg(void)
{
  struct tp_breaker_cfg c;
  tp_breaker_defaults(&c);
  c.failure_rate = 0.5;
  c.min_calls = 10;
  c.consecutive = 5;
  c.open_ms = 1000;
  c.probes = 3;
  c.bucket_ms = 100; /* window 1 s */
  return c;
}

static void test_consecutive_failures_open(void **state)
{
  (void)state;
  struct tp_breaker_cfg c = cfg();
  struct tp_breaker b;
  tp_breaker_init(&b, &c, 0);
  for (int i = 0; i < 4; i++)
    tp_breaker_record(&b, true, 10 + i);
  assert_int_equal(b.state, TP_BREAKER_CLOSED);
  assert_true(tp_breaker_allow(&b, 20));
  tp_breaker_record(&b, true, 21);
  assert_int_equal(b.state, TP_BREAKER_OPEN);
  assert_false(tp_breaker_allow(&b, 22));
  assert_int_equal(b.opens, 1);
}

static void test_success_resets_consecutive_count(void **state)
{
  (void)state;
  struct tp_breaker_cfg c = cfg();
  c.min_calls = 1000; /* rate rule out of the way */
  struct tp_breaker b;
  tp_breaker_init(&b, &c, 0);
  for (int round = 0; round < 10; round++) {
    for (int i = 0; i < 4; i++)
      tp_breaker_record(&b, true, round * 10 + i);
    tp_breaker_record(&b, false, round * 10 + 5);
  }
  assert_int_equal(b.state, TP_BREAKER_CLOSED);
}

static void test_soft_declines_count_for_the_rate_not_the_run(void **state)
{
  (void)state;
  struct tp_breaker_cfg c = cfg(); /* consecutive 5, rate 0.5 over >= 10 calls */
  struct tp_breaker b;
  tp_breaker_init(&b, &c, 0);
  /* 9 soft declines in a row: no consecutive rule, too few calls for the rate */
  for (int i = 0; i < 9; i++)
    tp_breaker_record_soft(&b, 10 + i);
  assert_int_equal(b.state, TP_BREAKER_CLOSED);
  assert_int_equal(b.consec, 0);
  /* the 10th call makes the window count: 10 of 10 failed */
  tp_breaker_record_soft(&b, 20);
  assert_int_equal(b.state, TP_BREAKER_OPEN);

  /* soft declines neither add to nor clear a run of hard failures */
  tp_breaker_init(&b, &c, 0);
  c.min_calls = 1000;
  b.cfg.min_calls = 1000;
  for (int i = 0; i < 4; i++)
    tp_breaker_record(&b, true, 10 + i);
  tp_breaker_record_soft(&b, 15);
  assert_int_equal(b.consec, 4);
  assert_int_equal(b.state, TP_BREAKER_CLOSED);
  tp_breaker_record(&b, true, 16);
  assert_int_equal(b.state, TP_BREAKER_OPEN);

  /* half-open: a soft decline neither reopens it nor passes the probe */
  tp_breaker_init(&b, &c, 0);
  for (int i = 0; i < 5; i++)
    tp_breaker_record(&b, true, 10 + i);
  assert_int_equal(tp_breaker_tick(&b, 2000), TP_BREAKER_HALF_OPEN);
  assert_true(tp_breaker_allow(&b, 2000));
  tp_breaker_record_soft(&b, 2001);
  assert_int_equal(b.state, TP_BREAKER_HALF_OPEN);
  /* ... and gives its slot back at once: three more probes go out (held
   * until the staleness limit, each soft answer refused every payment
   * for open_ms); repeats of one card give the slot back and count no more */
  for (int i = 0; i < 5; i++) {
    assert_true(tp_breaker_allow(&b, 2002));
    tp_breaker_release(&b, 2002);
  }
  assert_int_equal(b.state, TP_BREAKER_HALF_OPEN);
  for (int i = 0; i < 3; i++)
    assert_true(tp_breaker_allow(&b, 2002));
  assert_false(tp_breaker_allow(&b, 2002));
  for (int i = 0; i < 3; i++)
    tp_breaker_record(&b, false, 2003);
  assert_int_equal(b.state, TP_BREAKER_CLOSED);

  /* a processor answering 96 to every card: `probes` soft declines of
   * distinct cards reopen it (giving slots back alone kept it half-open
   * with every payment sent to it first) */
  tp_breaker_init(&b, &c, 0);
  for (int i = 0; i < 5; i++)
    tp_breaker_record(&b, true, 10 + i);
  assert_int_equal(tp_breaker_tick(&b, 2000), TP_BREAKER_HALF_OPEN);
  for (int i = 0; i < 2; i++) {
    assert_true(tp_breaker_allow(&b, 2001));
    tp_breaker_record_soft(&b, 2001);
    assert_int_equal(b.state, TP_BREAKER_HALF_OPEN);
  }
  assert_true(tp_breaker_allow(&b, 2001));
  tp_breaker_record_soft(&b, 2001);
  assert_int_equal(b.state, TP_BREAKER_OPEN);
}

static void test_failure_rate_needs_min_calls(void **state)
{
  (void)state;
  struct tp_breaker_cfg c = cfg();
  struct tp_breaker b;
  tp_breaker_init(&b, &c, 0);
  /* alternate: 50% failures but never 5 in a row */
  for (int i = 0; i < 9; i++)
    tp_breaker_record(&b, i % 2 == 0, 100 + i);
  assert_int_equal(b.state, TP_BREAKER_CLOSED); /* 9 calls < min_calls */
  int calls, fails;
  tp_breaker_window(&b, 110, &calls, &fails);
  assert_int_equal(calls, 9);
  assert_int_equal(fails, 5);
  tp_breaker_record(&b, false, 110); /* 10 calls, 5 failures = 0.5 */
  assert_int_equal(b.state, TP_BREAKER_CLOSED); /* checked on failures only */
  tp_breaker_record(&b, true, 111);  /* 11 calls, 6 failures */
  assert_int_equal(b.state, TP_BREAKER_OPEN);
}

static void test_failure_rate_below_threshold_stays_closed(void **state)
{
  (void)state;
  struct tp_breaker_cfg c = cfg();
  struct tp_breaker b;
  tp_breaker_init(&b, &c, 0);
  for (int i = 0; i < 100; i++)
    tp_breaker_record(&b, i % 3 == 0, i * 5); /* 33% */
  assert_int_equal(b.state, TP_BREAKER_CLOSED);
}

static void test_old_failures_leave_the_window(void **state)
{
  (void)state;
  struct tp_breaker_cfg c = cfg();
  struct tp_breaker b;
  tp_breaker_init(&b, &c, 0);
  /* 9 calls with 4 failures early on ... */
  for (int i = 0; i < 9; i++)
    tp_breaker_record(&b, i < 4, 10 + i);
  /* ... then, 2 s later (window is 1 s), a few successes and failures */
  tp_breaker_record(&b, false, 2000);
  for (int i = 0; i < 3; i++)
    tp_breaker_record(&b, true, 2001 + i);
  int calls, fails;
  tp_breaker_window(&b, 2010, &calls, &fails);
  assert_int_equal(calls, 4);
  assert_int_equal(fails, 3);
  assert_int_equal(b.state, TP_BREAKER_CLOSED);
}

static void open_it(struct tp_breaker *b, int64_t t)
{
  for (int i = 0; i < 5; i++)
    tp_breaker_record(b, true, t);
  assert_int_equal(b->state, TP_BREAKER_OPEN);
}

static void test_half_open_after_open_ms_admits_limited_probes(void **state)
{
  (void)state;
  struct tp_breaker_cfg c = cfg();
  struct tp_breaker b;
  tp_breaker_init(&b, &c, 0);
  open_it(&b, 100);
  assert_false(tp_breaker_allow(&b, 1099));
  assert_int_equal(tp_breaker_tick(&b, 1099), TP_BREAKER_OPEN);
  assert_true(tp_breaker_allow(&b, 1100));
  assert_int_equal(b.state, TP_BREAKER_HALF_OPEN);
  assert_true(tp_breaker_allow(&b, 1101));
  assert_true(tp_breaker_allow(&b, 1102));
  assert_false(tp_breaker_allow(&b, 1103)); /* 3 probes out */
  tp_breaker_record(&b, false, 1110);
  tp_breaker_record(&b, false, 1111);
  assert_int_equal(b.state, TP_BREAKER_HALF_OPEN);
  tp_breaker_record(&b, false, 1112);
  assert_int_equal(b.state, TP_BREAKER_CLOSED);
  assert_true(tp_breaker_allow(&b, 1113));
  /* the failures that opened it are forgotten */
  for (int i = 0; i < 4; i++)
    tp_breaker_record(&b, true, 1120);
  assert_int_equal(b.state, TP_BREAKER_CLOSED);
}

static void test_half_open_failure_reopens(void **state)
{
  (void)state;
  struct tp_breaker_cfg c = cfg();
  struct tp_breaker b;
  tp_breaker_init(&b, &c, 0);
  open_it(&b, 0);
  assert_true(tp_breaker_allow(&b, 1000));
  tp_breaker_record(&b, false, 1001);
  tp_breaker_record(&b, true, 1002);
  assert_int_equal(b.state, TP_BREAKER_OPEN);
  assert_int_equal(b.opens, 2);
  assert_false(tp_breaker_allow(&b, 1500));
  assert_false(tp_breaker_allow(&b, 2001)); /* open_ms counts from the re-open */
  assert_true(tp_breaker_allow(&b, 2002));
}

static void test_lost_probe_frees_its_slot(void **state)
{
  (void)state;
  struct tp_breaker_cfg c = cfg();
  c.probes = 1;
  struct tp_breaker b;
  tp_breaker_init(&b, &c, 0);
  open_it(&b, 0);
  assert_true(tp_breaker_allow(&b, 1000));
  assert_false(tp_breaker_allow(&b, 1500)); /* the probe never reports */
  assert_true(tp_breaker_allow(&b, 2000));  /* after open_ms another may go */
  /* A probe may take its call's timeout to report: until then its slot
   * is held even past open_ms. */
  c.probe_stale_ms = 3000;
  tp_breaker_init(&b, &c, 0);
  open_it(&b, 0);
  assert_true(tp_breaker_allow(&b, 1000));
  assert_false(tp_breaker_allow(&b, 2500));
  assert_false(tp_breaker_allow(&b, 3999));
  assert_true(tp_breaker_allow(&b, 4000));
}

static void test_late_answers_while_open_are_ignored(void **state)
{
  (void)state;
  struct tp_breaker_cfg c = cfg();
  struct tp_breaker b;
  tp_breaker_init(&b, &c, 0);
  open_it(&b, 0);
  for (int i = 0; i < 10; i++)
    tp_breaker_record(&b, false, 10 + i);
  assert_int_equal(b.state, TP_BREAKER_OPEN);
}

static void test_would_allow_takes_no_slot(void **state)
{
  (void)state;
  struct tp_breaker_cfg c = cfg();
  struct tp_breaker b;
  tp_breaker_init(&b, &c, 0);
  assert_true(tp_breaker_would_allow(&b, 1));
  open_it(&b, 0);
  assert_false(tp_breaker_would_allow(&b, 500));
  assert_true(tp_breaker_would_allow(&b, 1000)); /* half-open now, three slots */
  for (int i = 0; i < 3; i++) {
    assert_true(tp_breaker_would_allow(&b, 1001));
    assert_true(tp_breaker_allow(&b, 1001));
  }
  assert_false(tp_breaker_would_allow(&b, 1002)); /* a retry would be refused at send: passed over */
  assert_int_equal(b.admitted, 3);
  tp_breaker_release(&b, 1003);
  assert_true(tp_breaker_would_allow(&b, 1003));
  assert_int_equal(b.admitted, 2);
}

static void test_answers_to_calls_sent_before_half_open_are_no_probes(void **state)
{
  (void)state;
  struct tp_breaker_cfg c = cfg();
  struct tp_breaker b;
  tp_breaker_init(&b, &c, 0);
  open_it(&b, 100); /* open at 100; two calls sent at 50 are still out */
  assert_int_equal(tp_breaker_tick(&b, 1100), TP_BREAKER_HALF_OPEN);
  assert_true(tp_breaker_before_probes(&b, 50, 1200));
  assert_true(tp_breaker_before_probes(&b, 1100 - TP_BREAKER_SENT_SLACK_MS - 1, 1200));
  assert_false(tp_breaker_before_probes(&b, 1100 - TP_BREAKER_SENT_SLACK_MS, 1200)); /* a probe's */
  assert_false(tp_breaker_before_probes(&b, 1150, 1200));
  tp_breaker_record(&b, false, 1300); /* a probe's success counts */
  assert_int_equal(b.succeeded, 1);
  /* closed, nothing is before the probes */
  tp_breaker_init(&b, &c, 0);
  assert_false(tp_breaker_before_probes(&b, -5000, 10));
}

static void test_health_checks(void **state)
{
  (void)state;
  struct tp_breaker_cfg c = cfg();
  struct tp_breaker b;
  tp_breaker_init(&b, &c, 0);
  /* failed checks in a row open it; a passing check ends the run (isolated
   * blips never add up), and checks and calls are counted apart */
  for (int i = 0; i < 8; i++) {
    tp_breaker_health(&b, false, 1);
    tp_breaker_health(&b, true, 2);
  }
  tp_breaker_record(&b, true, 1);
  tp_breaker_record(&b, true, 2);
  tp_breaker_health(&b, false, 3);
  tp_breaker_health(&b, true, 3); /* a pass does not clear the calls' run */
  tp_breaker_record(&b, true, 3);
  tp_breaker_record(&b, true, 3);
  assert_int_equal(b.consec, 4);
  for (int i = 0; i < 4; i++)
    tp_breaker_health(&b, false, 4 + i);
  assert_int_equal(b.state, TP_BREAKER_CLOSED);
  tp_breaker_record(&b, false, 8); /* a call that worked ends the checks' run */
  for (int i = 0; i < 4; i++)
    tp_breaker_health(&b, false, 8 + i);
  assert_int_equal(b.state, TP_BREAKER_CLOSED);
  tp_breaker_health(&b, false, 12);
  assert_int_equal(b.state, TP_BREAKER_OPEN);
  /* still failing: stays open past open_ms */
  tp_breaker_health(&b, false, 900);
  assert_int_equal(tp_breaker_tick(&b, 1500), TP_BREAKER_OPEN);
  /* a pass while open: half-open early */
  tp_breaker_health(&b, true, 1600);
  assert_int_equal(b.state, TP_BREAKER_HALF_OPEN);
  /* passes count as probes: closed after `probes` of them */
  tp_breaker_health(&b, true, 1700);
  tp_breaker_health(&b, true, 1800);
  assert_int_equal(b.state, TP_BREAKER_HALF_OPEN);
  tp_breaker_health(&b, true, 1900);
  assert_int_equal(b.state, TP_BREAKER_CLOSED);
  /* opened by failing calls: a passing check neither ends the open period
   * nor passes a probe (the processor answers its health check and fails
   * payments); open_ms still does, and only calls close it */
  open_it(&b, 2000);
  tp_breaker_health(&b, true, 2100);
  assert_int_equal(b.state, TP_BREAKER_OPEN);
  assert_int_equal(tp_breaker_tick(&b, 2000 + c.open_ms), TP_BREAKER_HALF_OPEN);
  for (int i = 0; i < 5; i++)
    tp_breaker_health(&b, true, 3100 + i);
  assert_int_equal(b.state, TP_BREAKER_HALF_OPEN);
  /* a failed check while half-open: open again */
  tp_breaker_health(&b, false, 3200);
  assert_int_equal(b.state, TP_BREAKER_OPEN);
  /* opened by checks: a pass is half-open at once, as above */
  tp_breaker_init(&b, &c, 4000);
  for (int i = 0; i < 5; i++)
    tp_breaker_health(&b, false, 4001 + i);
  assert_int_equal(b.state, TP_BREAKER_OPEN);
  tp_breaker_health(&b, true, 4100);
  assert_int_equal(b.state, TP_BREAKER_HALF_OPEN);
  /* checks that keep failing hold it open only so long: past
   * TP_BREAKER_HEALTH_HOLD open periods payments probe it, and a probe that
   * succeeds closes it (its health endpoint fails, its payments do not) */
  tp_breaker_init(&b, &c, 10000);
  for (int i = 0; i < 5; i++)
    tp_breaker_health(&b, false, 10001 + i);
  assert_int_equal(b.state, TP_BREAKER_OPEN);
  int64_t t = 10005;
  for (; t < 10005 + (TP_BREAKER_HEALTH_HOLD + 2) * c.open_ms; t += c.open_ms / 4)
    tp_breaker_health(&b, false, t);
  assert_int_equal(tp_breaker_tick(&b, t + c.open_ms), TP_BREAKER_HALF_OPEN);
  tp_breaker_health(&b, false, t + c.open_ms + 1); /* no longer reopens */
  assert_int_equal(b.state, TP_BREAKER_HALF_OPEN);
  for (int i = 0; i < c.probes; i++) {
    assert_true(tp_breaker_allow(&b, t + c.open_ms + 2 + i));
    tp_breaker_record(&b, false, t + c.open_ms + 2 + i);
  }
  assert_int_equal(b.state, TP_BREAKER_CLOSED);
}

/* ---- registry: config and fees ------------------------------------------ */

static int64_t fake_now;
static int64_t fake_clock(void)
{
  return fake_now;
}

static int teardown_registry(void **state)
{
  (void)state;
  tp_procs_reset();
  tp_config_reset();
  tp_procs_set_clock(NULL);
  return 0;
}

static void put(const char *sec, const char *k, const char *v)
{
  tp_config_put(sec, k, v);
}

static void test_no_sections_gives_the_sandbox(void **state)
{
  (void)state;
  tp_config_reset();
  assert_int_equal(tp_procs_configure(), 0);
  assert_int_equal(tp_procs_count(), 1);
  struct tp_proc *p = tp_proc_at(0);
  assert_string_equal(p->name, "sandbox");
  assert_string_equal(p->type, "sandbox");
  assert_true(p->can_query_status);
  assert_ptr_equal(tp_proc_find("sandbox"), p);
  assert_null(tp_proc_find("nope"));
  assert_true(tp_proc_supports(p, "amex", "jpy"));
  assert_int_equal(tp_proc_fee(p, "usd", 10000), 0);
  assert_true(tp_procs_any_usable());
}

static void test_fees_exact_half_even_per_currency(void **state)
{
  (void)state;
  tp_config_reset();
  put("processor.a", "type", "restjson");
  put("processor.a", "endpoint", "http://127.0.0.1:9/p/a");
  put("processor.a", "fee_percent", "2.9");
  put("processor.a", "fee_fixed", "30");
  put("processor.a", "fee_fixed.eur", "25");
  put("processor.a", "fee_fixed.JPY", "0");
  put("processor.b", "type", "restjson");
  put("processor.b", "endpoint", "https://proc.example/base/");
  put("processor.b", "fee_percent", "0.125");
  assert_int_equal(tp_procs_configure(), 0);
  assert_int_equal(tp_procs_count(), 2);
  struct tp_proc *a = tp_proc_find("a"), *b = tp_proc_find("b");
  assert_non_null(a);
  assert_non_null(b);
  assert_true(a->can_query_status);
  /* 2.9% of 1000 = 29 exactly */
  assert_int_equal(tp_proc_fee(a, "usd", 1000), 29 + 30);
  assert_int_equal(tp_proc_fee(a, "eur", 1000), 29 + 25);
  assert_int_equal(tp_proc_fee(a, "jpy", 1000), 29);
  /* 2.9% of 50 = 1.45 -> 1; of 150 = 4.35 -> 4; of 250 = 7.25 -> 7 */
  assert_int_equal(tp_proc_fee(a, "usd", 50), 1 + 30);
  /* half-even: 0.125% of 400 = 0.5 -> 0; of 1200 = 1.5 -> 2; of 2000 = 2.5 -> 2 */
  assert_int_equal(tp_proc_fee(b, "usd", 400), 0);
  assert_int_equal(tp_proc_fee(b, "usd", 1200), 2);
  assert_int_equal(tp_proc_fee(b, "usd", 2000), 2);
  assert_int_equal(tp_proc_fee(b, "usd", 2001), 3);
  /* largest amount: no overflow */
  /* largest amount: 2899999.971 -> 2900000, no overflow */
  assert_int_equal(tp_proc_fee(a, "usd", 99999999), 2900000 + 30);
}

static void test_brands_and_currencies_filter(void **state)
{
  (void)state;
  tp_config_reset();
  put("processor.x", "type", "sandbox");
  put("processor.x", "brands", "Visa, mastercard");
  put("processor.x", "currencies", "usd,EUR");
  assert_int_equal(tp_procs_configure(), 0);
  struct tp_proc *x = tp_proc_find("x");
  assert_true(tp_proc_supports(x, "visa", "usd"));
  assert_true(tp_proc_supports(x, "mastercard", "eur"));
  assert_false(tp_proc_supports(x, "amex", "usd"));
  assert_false(tp_proc_supports(x, "visa", "gbp"));
  assert_true(tp_proc_supports(x, NULL, "usd"));
  json_t *js = tp_proc_json(x);
  assert_string_equal(json_string_value(json_object_get(js, "breaker")), "closed");
  assert_int_equal(json_array_size(json_object_get(js, "brands")), 2);
  assert_string_equal(json_string_value(json_array_get(json_object_get(js, "currencies"), 1)), "eur");
  json_decref(js);
}

static void test_registry_breaker_record_and_stats(void **state)
{
  (void)state;
  tp_config_reset();
  put("processor.r", "type", "restjson");
  put("processor.r", "endpoint", "http://127.0.0.1:9");
  put("processor.r", "api_key", "sk_secret_never_shown");
  put("processor.r", "breaker_consecutive", "3");
  put("processor.r", "breaker_open_ms", "200");
  put("processor.r", "breaker_half_open_probes", "1");
  fake_now = 1000;
  tp_procs_set_clock(fake_clock);
  assert_int_equal(tp_procs_configure(), 0);
  struct tp_proc *r = tp_proc_find("r");
  /* issuer declines are not failures */
  for (int i = 0; i < 10; i++)
    tp_proc_record(r, "visa", "usd", TP_OUT_DECLINED, "insufficient_funds", false, 1000 * (i + 1), 0, true);
  assert_int_equal(tp_proc_breaker(r), TP_BREAKER_CLOSED);
  assert_int_equal(tp_proc_latency_us(r, 50), 5000);
  assert_int_equal(tp_proc_latency_us(r, 90), 9000);
  assert_int_equal(tp_proc_latency_us(r, 99), 10000);
  tp_proc_record(r, "visa", "usd", TP_OUT_APPROVED, "", false, 500, 0, true);
  tp_proc_record(r, "visa", "usd", TP_OUT_APPROVED, "", false, 500, 0, true);
  /* soft declines count as failures but not toward breaker_consecutive */
  tp_proc_record(r, "visa", "usd", TP_OUT_DECLINED, "processing_error", true, 500, 101, true);
  tp_proc_record(r, "visa", "usd", TP_OUT_DECLINED, "processing_error", true, 500, 102, true);
  tp_proc_record(r, "visa", "usd", TP_OUT_DECLINED, "processing_error", true, 500, 103, true);
  assert_int_equal(tp_proc_breaker(r), TP_BREAKER_CLOSED);
  tp_proc_record(r, "visa", "usd", TP_OUT_ERROR, "processor_timeout", true, 500, 0, true);
  tp_proc_record(r, "visa", "usd", TP_OUT_DECLINED, "processing_error", true, 500, 104, true);
  tp_proc_record(r, "visa", "usd", TP_OUT_ERROR, "processor_timeout", true, 500, 0, true);
  assert_true(tp_proc_allow(r, NULL));
  tp_proc_record(r, "visa", "usd", TP_OUT_ERROR, "processor_http_5xx", true, 500, 0, true);
  assert_int_equal(tp_proc_breaker(r), TP_BREAKER_OPEN);
  assert_false(tp_proc_allow(r, NULL));
  assert_false(tp_procs_any_usable());
  json_t *js = tp_proc_json(r);
  char *s = json_dumps(js, 0);
  assert_null(strstr(s, "sk_secret")); /* credentials never shown */
  free(s);
  assert_string_equal(json_string_value(json_object_get(js, "breaker")), "open");
  assert_int_equal(json_integer_value(json_object_get(js, "calls")), 19);
  assert_int_equal(json_integer_value(json_object_get(js, "failures")), 7);
  json_decref(js);
  assert_true(tp_proc_success_rate(r) > 0.10 && tp_proc_success_rate(r) < 0.11); /* 2/19 */
  fake_now += 200;
  assert_int_equal(tp_proc_breaker(r), TP_BREAKER_HALF_OPEN);
  assert_true(tp_proc_allow(r, NULL));
  assert_false(tp_proc_allow(r, NULL));
  /* a capture's soft decline (not a probe) frees no probe slot and reopens
   * nothing, however often one payment's capture is repeated */
  for (int i = 0; i < 5; i++)
    tp_proc_record(r, "visa", "usd", TP_OUT_DECLINED, "processing_error", true, 500, 777, false);
  assert_int_equal(tp_proc_breaker(r), TP_BREAKER_HALF_OPEN);
  assert_false(tp_proc_may_call(r));
  assert_false(tp_proc_allow(r, NULL));
  tp_proc_record(r, "visa", "usd", TP_OUT_APPROVED, "", false, 500, 0, true);
  assert_int_equal(tp_proc_breaker(r), TP_BREAKER_CLOSED);
  assert_true(tp_procs_any_usable());
}

static int transitions[3][3];
static void on_breaker(struct tp_proc *p, enum tp_breaker_state from, enum tp_breaker_state to, void *arg)
{
  (void)p;
  (void)arg;
  transitions[from][to]++;
}

static void test_breaker_callback_and_health(void **state)
{
  (void)state;
  tp_config_reset();
  put("processor.h", "type", "restjson");
  put("processor.h", "endpoint", "http://127.0.0.1:9");
  fake_now = 5000;
  tp_procs_set_clock(fake_clock);
  assert_int_equal(tp_procs_configure(), 0);
  memset(transitions, 0, sizeof transitions);
  tp_procs_on_breaker(on_breaker, NULL);
  struct tp_proc *h = tp_proc_find("h");
  for (int i = 0; i < 5; i++)
    tp_proc_health(h, false);
  assert_int_equal(transitions[TP_BREAKER_CLOSED][TP_BREAKER_OPEN], 1);
  tp_proc_health(h, true);
  assert_int_equal(transitions[TP_BREAKER_OPEN][TP_BREAKER_HALF_OPEN], 1);
  json_t *js = tp_proc_json(h);
  assert_string_equal(json_string_value(json_object_get(js, "health")), "up");
  assert_string_equal(json_string_value(json_object_get(js, "breaker")), "half_open");
  json_decref(js);
}

/* The open period ends and a call fails before anything looked at the
 * breaker: half-open and open again inside one call's accounting. Both
 * transitions are reported (the log and opens_total counted none). */
static int reopen_seen[3][3];
static void on_reopen(struct tp_proc *p, enum tp_breaker_state from, enum tp_breaker_state to, void *arg)
{
  (void)arg;
  if (strcmp(p->name, "q") == 0)
    reopen_seen[from][to]++;
}

/* Callbacks stay registered for the program: on_reopen once. */
static void watch_q(void)
{
  static bool on;
  memset(reopen_seen, 0, sizeof reopen_seen);
  if (!on)
    tp_procs_on_breaker(on_reopen, NULL);
  on = true;
}

/* Processor q: open after one failure, for 200 ms, `probes` probes
 * (NULL: the default), its transitions counted in reopen_seen. */
static struct tp_proc *proc_q(const char *probes, int64_t now)
{
  tp_config_reset();
  put("processor.q", "type", "restjson");
  put("processor.q", "endpoint", "http://127.0.0.1:9");
  put("processor.q", "breaker_consecutive", "1");
  put("processor.q", "breaker_open_ms", "200");
  if (probes)
    put("processor.q", "breaker_half_open_probes", probes);
  fake_now = now;
  tp_procs_set_clock(fake_clock);
  assert_int_equal(tp_procs_configure(), 0);
  watch_q();
  return tp_proc_find("q");
}

static void test_reopen_inside_one_call_reports_both_transitions(void **state)
{
  (void)state;
  struct tp_proc *q = proc_q(NULL, 9000);
  tp_proc_record(q, "visa", "usd", TP_OUT_ERROR, "processor_timeout", true, 0, 0, true);
  assert_int_equal(reopen_seen[TP_BREAKER_CLOSED][TP_BREAKER_OPEN], 1);
  fake_now += 200;
  tp_proc_record(q, "visa", "usd", TP_OUT_ERROR, "processor_timeout", true, 0, 0, true);
  assert_int_equal(reopen_seen[TP_BREAKER_OPEN][TP_BREAKER_HALF_OPEN], 1);
  assert_int_equal(reopen_seen[TP_BREAKER_HALF_OPEN][TP_BREAKER_OPEN], 1);
  json_t *js = tp_proc_json(q);
  assert_string_equal(json_string_value(json_object_get(js, "breaker")), "open");
  assert_int_equal(json_integer_value(json_object_get(js, "breaker_opens")), 2);
  json_decref(js);
  /* the same through a health check failing the moment the period ends */
  fake_now += 200;
  tp_proc_health(q, false);
  assert_int_equal(reopen_seen[TP_BREAKER_OPEN][TP_BREAKER_HALF_OPEN], 2);
  assert_int_equal(reopen_seen[TP_BREAKER_HALF_OPEN][TP_BREAKER_OPEN], 2);
}

/* A slot reserved in one half-open period and given back in a later one
 * frees nothing of the later period's (it admitted one probe too many);
 * at send it is no longer good (the breaker reopened meanwhile); and a
 * release whose clock tick ends an open period reports it. */
static void test_a_slot_belongs_to_its_half_open_period(void **state)
{
  (void)state;
  struct tp_proc *q = proc_q("2", 20000);
  uint64_t old = 0, a = 0, b = 0;
  tp_proc_record(q, "visa", "usd", TP_OUT_ERROR, "processor_timeout", true, 0, 0, true);
  fake_now += 200;
  assert_true(tp_proc_reserve(q, &old));
  assert_true(old != 0);
  assert_true(tp_proc_slot_live(q, old));
  tp_proc_record(q, "visa", "usd", TP_OUT_ERROR, "processor_timeout", true, 0, 0, true); /* another probe fails */
  assert_false(tp_proc_slot_live(q, old)); /* open again: the send must ask */
  fake_now += 200;
  assert_true(tp_proc_allow(q, &a));
  assert_true(tp_proc_allow(q, &b));
  assert_false(tp_proc_allow(q, NULL));
  assert_false(tp_proc_slot_live(q, old));
  tp_proc_release(q, old); /* the old period's: nothing freed */
  assert_false(tp_proc_allow(q, NULL));
  tp_proc_release(q, a); /* this period's: one freed */
  assert_true(tp_proc_allow(q, NULL));
  /* a release that ticks the breaker out of its open period reports it */
  tp_proc_record(q, "visa", "usd", TP_OUT_ERROR, "processor_timeout", true, 0, 0, true);
  int before = reopen_seen[TP_BREAKER_OPEN][TP_BREAKER_HALF_OPEN];
  fake_now += 200;
  tp_proc_release(q, b);
  assert_int_equal(reopen_seen[TP_BREAKER_OPEN][TP_BREAKER_HALF_OPEN], before + 1);
  assert_int_equal(tp_proc_breaker(q), TP_BREAKER_HALF_OPEN);
}

static void expect_config_error(const char *key, const char *value)
{
  tp_config_reset();
  put("processor.bad", "type", "restjson");
  put("processor.bad", "endpoint", "http://127.0.0.1:9");
  put("processor.bad", key, value);
  if (tp_procs_configure() != -1)
    fail_msg("%s = %s accepted", key, value);
  assert_int_equal(tp_procs_count(), 0);
}

static void test_config_errors(void **state)
{
  (void)state;
  expect_config_error("type", "carrier_pigeon");
  expect_config_error("endpoint", "ftp://127.0.0.1/x");
  expect_config_error("endpoint", "not a url");
  expect_config_error("endpoint", "http://user:pw@127.0.0.1/x");
  expect_config_error("endpoint", "http://127.0.0.1/x?key=1");
  expect_config_error("timeout_ms", "0");
  expect_config_error("timeout_ms", "12abc");
  expect_config_error("fee_percent", "2.91234");
  expect_config_error("fee_percent", "-1");
  expect_config_error("fee_percent", "101");
  expect_config_error("fee_percent", "2.");
  expect_config_error("fee_fixed", "-5");
  expect_config_error("fee_fixed.xyz", "5");
  expect_config_error("brands", "visa,bitcoin");
  expect_config_error("currencies", "usd,zzz");
  expect_config_error("breaker_failure_rate", "0");
  expect_config_error("breaker_failure_rate", "1.5");
  expect_config_error("breaker_min_calls", "0");
  expect_config_error("health_interval_ms", "5");

  tp_config_reset();
  put("processor.a b", "type", "sandbox");
  assert_int_equal(tp_procs_configure(), -1);

  tp_config_reset();
  put("processor.iso", "type", "iso8583");
  put("processor.iso", "endpoint", "127.0.0.1");
  assert_int_equal(tp_procs_configure(), -1);
  tp_config_reset();
  put("processor.iso", "type", "iso8583");
  put("processor.iso", "endpoint", "127.0.0.1:70000");
  assert_int_equal(tp_procs_configure(), -1);
  tp_config_reset();
  put("processor.iso", "type", "iso8583");
  put("processor.iso", "endpoint", "127.0.0.1:8583");
  put("processor.iso", "terminal_id", "TERM0001");
  assert_int_equal(tp_procs_configure(), 0);
  assert_false(tp_proc_find("iso")->can_query_status);

  tp_config_reset();
  put("processor.r", "type", "restjson");
  assert_int_equal(tp_procs_configure(), -1); /* endpoint required */
}

static void test_duplicate_names_rejected(void **state)
{
  (void)state;
  tp_config_reset();
  put("processor.dup", "type", "sandbox");
  put("processor.DUP", "type", "sandbox");
  put("processor.dup2", "type", "sandbox");
  /* section names compare case-insensitively in the config: one section */
  assert_int_equal(tp_procs_configure(), 0);
  assert_int_equal(tp_procs_count(), 2);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_consecutive_failures_open),
    cmocka_unit_test(test_success_resets_consecutive_count),
    cmocka_unit_test(test_soft_declines_count_for_the_rate_not_the_run),
    cmocka_unit_test(test_failure_rate_needs_min_calls),
    cmocka_unit_test(test_failure_rate_below_threshold_stays_closed),
    cmocka_unit_test(test_old_failures_leave_the_window),
    cmocka_unit_test(test_half_open_after_open_ms_admits_limited_probes),
    cmocka_unit_test(test_half_open_failure_reopens),
    cmocka_unit_test(test_lost_probe_frees_its_slot),
    cmocka_unit_test(test_late_answers_while_open_are_ignored),
    cmocka_unit_test(test_answers_to_calls_sent_before_half_open_are_no_probes),
    cmocka_unit_test(test_would_allow_takes_no_slot),
    cmocka_unit_test(test_health_checks),
    cmocka_unit_test_teardown(test_no_sections_gives_the_sandbox, teardown_registry),
    cmocka_unit_test_teardown(test_fees_exact_half_even_per_currency, teardown_registry),
    cmocka_unit_test_teardown(test_brands_and_currencies_filter, teardown_registry),
    cmocka_unit_test_teardown(test_registry_breaker_record_and_stats, teardown_registry),
    cmocka_unit_test_teardown(test_breaker_callback_and_health, teardown_registry),
    cmocka_unit_test_teardown(test_reopen_inside_one_call_reports_both_transitions, teardown_registry),
    cmocka_unit_test_teardown(test_a_slot_belongs_to_its_half_open_period, teardown_registry),
    cmocka_unit_test_teardown(test_config_errors, teardown_registry),
    cmocka_unit_test_teardown(test_duplicate_names_rejected, teardown_registry),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

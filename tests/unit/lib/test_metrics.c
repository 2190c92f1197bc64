/* The metrics registry: exact values, the exposition format, escaping,
 * bounds, and counting from many threads at once (plus its cost). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <cmocka.h>

#include "metrics.h"
#include "util.h"

static int reset(void **state)
{
  (void)state;
  tp_metrics_reset();
  return 0;
}

static void test_counter_adds_and_renders_with_help_and_type(void **state)
{
  (void)state;
  tp_metric_help("t_requests_total", "Requests.");
  tp_metric_inc("t_requests_total", "route=\"/a\"", 2);
  tp_metric_inc("t_requests_total", "route=\"/a\"", 3);
  tp_metric_inc("t_requests_total", "route=\"/b\"", 1);
  assert_int_equal(tp_metric_value("t_requests_total", "route=\"/a\""), 5);
  assert_int_equal(tp_metric_value("t_requests_total", "route=\"/b\""), 1);
  char *t = tp_metrics_render();
  assert_non_null(t);
  assert_non_null(strstr(t, "# HELP t_requests_total Requests.\n# TYPE t_requests_total counter\n"
                            "t_requests_total{route=\"/a\"} 5\nt_requests_total{route=\"/b\"} 1\n"));
  /* HELP and TYPE once per name */
  assert_null(strstr(strstr(t, "# TYPE t_requests_total") + 1, "# TYPE t_requests_total"));
  free(t);
}

static void test_gauge_set_and_add(void **state)
{
  (void)state;
  tp_metric_set("t_depth", NULL, 7);
  tp_metric_add("t_depth", NULL, -3);
  assert_int_equal(tp_metric_value("t_depth", NULL), 4);
  char *t = tp_metrics_render();
  assert_non_null(strstr(t, "# TYPE t_depth gauge\nt_depth 4\n"));
  free(t);
}

static void test_histogram_buckets_are_cumulative_with_sum_and_count(void **state)
{
  (void)state;
  tp_metric_observe_us("t_latency_seconds", "op=\"x\"", 400);     /* <= 0.0005 */
  tp_metric_observe_us("t_latency_seconds", "op=\"x\"", 1000);    /* <= 0.001 (bound inclusive) */
  tp_metric_observe_us("t_latency_seconds", "op=\"x\"", 30000);   /* <= 0.05 */
  tp_metric_observe_us("t_latency_seconds", "op=\"x\"", 20000000); /* > 10: only +Inf */
  char *t = tp_metrics_render();
  assert_non_null(strstr(t, "# TYPE t_latency_seconds histogram\n"));
  assert_non_null(strstr(t, "t_latency_seconds_bucket{op=\"x\",le=\"0.0005\"} 1\n"));
  assert_non_null(strstr(t, "t_latency_seconds_bucket{op=\"x\",le=\"0.001\"} 2\n"));
  assert_non_null(strstr(t, "t_latency_seconds_bucket{op=\"x\",le=\"0.025\"} 2\n"));
  assert_non_null(strstr(t, "t_latency_seconds_bucket{op=\"x\",le=\"0.05\"} 3\n"));
  assert_non_null(strstr(t, "t_latency_seconds_bucket{op=\"x\",le=\"10\"} 3\n"));
  assert_non_null(strstr(t, "t_latency_seconds_bucket{op=\"x\",le=\"+Inf\"} 4\n"));
  assert_non_null(strstr(t, "t_latency_seconds_sum{op=\"x\"} 20.031400\n"));
  assert_non_null(strstr(t, "t_latency_seconds_count{op=\"x\"} 4\n"));
  free(t);
  tp_metric_observe_n("t_batch_size", NULL, 3);
  t = tp_metrics_render();
  assert_non_null(strstr(t, "t_batch_size_bucket{le=\"2\"} 0\nt_batch_size_bucket{le=\"5\"} 1\n"));
  assert_non_null(strstr(t, "t_batch_size_sum 3\nt_batch_size_count 1\n"));
  free(t);
}

static void test_type_of_first_use_wins_and_bad_names_are_ignored(void **state)
{
  (void)state;
  tp_metric_inc("t_mixed", NULL, 1);
  tp_metric_set("t_mixed", NULL, 100);
  tp_metric_observe_us("t_mixed", NULL, 5);
  assert_int_equal(tp_metric_value("t_mixed", NULL), 1);
  tp_metric_inc("9bad", NULL, 1);
  tp_metric_inc("bad name", NULL, 1);
  tp_metric_inc(NULL, NULL, 1);
  char *t = tp_metrics_render();
  assert_null(strstr(t, "bad"));
  free(t);
}

static void test_label_values_are_escaped(void **state)
{
  (void)state;
  char esc[64];
  tp_metric_label_escape(esc, sizeof esc, "a\"b\\c\nd");
  assert_string_equal(esc, "a\\\"b\\\\c\\nd");
  tp_metric_label_escape(esc, 4, "\"\"\"");
  assert_string_equal(esc, "\\\""); /* truncated, never a half escape */
}

static void test_series_count_is_bounded(void **state)
{
  (void)state;
  char l[64];
  for (int i = 0; i < TP_METRICS_MAX_SERIES + 10; i++) {
    snprintf(l, sizeof l, "i=\"%d\"", i);
    tp_metric_inc("t_many_total", l, 1);
  }
  char *t = tp_metrics_render();
  assert_non_null(strstr(t, "turnpike_metrics_dropped_series_total 10\n"));
  free(t);
}

#define THREADS 4
#define PER_THREAD 200000
static void *hammer(void *arg)
{
  (void)arg;
  for (int i = 0; i < PER_THREAD; i++) {
    tp_metric_inc("t_hot_total", "route=\"/v1/payment_intents\",method=\"POST\",code=\"2xx\"", 1);
    tp_metric_observe_us("t_hot_seconds", "route=\"/v1/payment_intents\"", i % 5000);
  }
  return NULL;
}

static void test_threads_lose_no_counts_and_updates_are_cheap(void **state)
{
  (void)state;
  pthread_t th[THREADS];
  int64_t t0 = tp_mono_ns();
  for (int i = 0; i < THREADS; i++)
    pthread_create(&th[i], NULL, hammer, NULL);
  for (int i = 0; i < THREADS; i++)
    pthread_join(th[i], NULL);
  int64_t ns = tp_mono_ns() - t0;
  assert_int_equal(tp_metric_value("t_hot_total", "route=\"/v1/payment_intents\",method=\"POST\",code=\"2xx\""),
                   THREADS * PER_THREAD);
  assert_int_equal(tp_metric_value("t_hot_seconds", "route=\"/v1/payment_intents\""), THREADS * PER_THREAD);
  printf("metrics: %d threads x %d (inc + observe) on one series: %.0f ns wall per pair per thread\n", THREADS,
         PER_THREAD, (double)ns / PER_THREAD);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_counter_adds_and_renders_with_help_and_type, reset),
      cmocka_unit_test_setup(test_gauge_set_and_add, reset),
      cmocka_unit_test_setup(test_histogram_buckets_are_cumulative_with_sum_and_count, reset),
      cmocka_unit_test_setup(test_type_of_first_use_wins_and_bad_names_are_ignored, reset),
      cmocka_unit_test_setup(test_label_values_are_escaped, reset),
      cmocka_unit_test_setup(test_series_count_is_bounded, reset),
      cmocka_unit_test_setup(test_threads_lose_no_counts_and_updates_are_cheap, reset),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

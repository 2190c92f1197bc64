/* tp_json_loads (src/lib/jparse.c) gives jansson's trees and refusals:
 * every case is compared with json_loads, and the ones that say something
 * on their own are checked against the expected value too. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "jparse.h"

/* Same acceptance and, when accepted, the same serialisation (key order). */
static bool agrees(const char *text, bool *accepted)
{
  json_t *want = json_loads(text, 0, NULL);
  json_t *got = tp_json_loads(text);
  bool ok = !want == !got;
  if (ok && want) {
    char *a = json_dumps(want, JSON_COMPACT);
    char *b = json_dumps(got, JSON_COMPACT);
    ok = a && b && strcmp(a, b) == 0 && json_equal(want, got);
    free(a);
    free(b);
  }
  *accepted = want != NULL;
  json_decref(want);
  json_decref(got);
  return ok;
}

static void expect(const char *text, bool accept)
{
  bool accepted;
  if (!agrees(text, &accepted))
    fail_msg("tp_json_loads and json_loads disagree on %s", text);
  if (accepted != accept)
    fail_msg("%s: expected %s", text, accept ? "accepted" : "refused");
}

static void test_accepts_and_refuses_what_jansson_does(void **state)
{
  (void)state;
  static const char *const ok[] = {
    "{}", "[]", " \t\r\n{ } ", "[1,2,3]", "[-0,0,-1,10,0.5,-0.25,1e3,1E-3,2e+2,1.5e10]",
    "[9223372036854775807,-9223372036854775808]", "[1e-400,5e-324,1.7976931348623157e308]",
    "{\"a\":{\"b\":[true,false,null]},\"\":\"\"}", "[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"]",
    "[\"\\u00e9\\u4E2D\\ud83d\\ude00\"]", "[\"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\x7f\"]",
    "{\"k\":1,\"k\":2,\"j\":3}", "{\"\\u006b\":1}", "[[],{},[{}]]",
  };
  static const char *const bad[] = {
    "", " ", "1", "\"s\"", "true", "null", "[1,]", "[,1]", "{\"a\":1,}", "{\"a\"}", "{1:2}", "{\"a\" 1}",
    "[01]", "[-]", "[1.]", "[.5]", "[1e]", "[1e+]", "[+1]", "[0x10]", "[NaN]", "[Infinity]",
    "[9223372036854775808]", "[-9223372036854775809]", "[1e400]", "[-1e400]",
    "[\"\\u0000\"]", "[\"\\ud83d\"]", "[\"\\ude00\"]", "[\"\\ud83d\\u0041\"]", "[\"\\x41\"]", "[\"\\u12\"]",
    "[\"a\nb\"]", "[\"\x01\"]", "[\"\xc0\x80\"]", "[\"\xed\xa0\x80\"]", "[\"\xf4\x90\x80\x80\"]", "[\"\x80\"]",
    "[\"\xe4\xb8\"]", "[\"abc", "[truex]", "[nul]", "{}x", "[] []", "{}\xc3\xa9", "[1]]", "{\"a\":1}}",
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
    expect(ok[i], true);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect(bad[i], false);
}

static void test_values_come_out_as_written(void **state)
{
  (void)state;
  json_t *o = tp_json_loads("{\"s\":\"\\ud83d\\ude00\\u00e9x\",\"k\":1,\"i\":-42,\"r\":0.5,\"k\":2,\"n\":null}");
  assert_non_null(o);
  assert_string_equal(json_string_value(json_object_get(o, "s")), "\xf0\x9f\x98\x80\xc3\xa9x");
  assert_int_equal(json_integer_value(json_object_get(o, "i")), -42);
  assert_true(json_is_real(json_object_get(o, "r")));
  assert_true(json_is_null(json_object_get(o, "n")));
  /* a repeated key: the last value, in the first key's place */
  assert_int_equal(json_integer_value(json_object_get(o, "k")), 2);
  assert_int_equal(json_object_size(o), 5);
  const char *first = json_object_iter_key(json_object_iter_next(o, json_object_iter(o)));
  assert_string_equal(first, "k");
  json_decref(o);
}

/* jansson counts every value against its 2048 levels, scalars too. */
static void test_nesting_limit_is_jansson_s(void **state)
{
  (void)state;
  static const struct {
    int arrays;
    const char *inner;
    bool accept;
  } cases[] = {{2048, "", true}, {2049, "", false}, {2047, "1", true}, {2048, "1", false}, {2047, "{}", true}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    int n = cases[c].arrays;
    size_t il = strlen(cases[c].inner);
    char *s = malloc((size_t)n * 2 + il + 1);
    assert_non_null(s);
    memset(s, '[', (size_t)n);
    memcpy(s + n, cases[c].inner, il);
    memset(s + n + il, ']', (size_t)n);
    s[2 * (size_t)n + il] = '\0';
    expect(s, cases[c].accept);
    free(s);
  }
}

/* Long strings with escapes and long numbers go through the scratch
 * buffer: keys in it must survive the value that reuses it. */
static void test_long_strings_and_keys_with_escapes(void **state)
{
  (void)state;
  size_t n = 5000;
  char *s = malloc(n * 8 + 200);
  assert_non_null(s);
  size_t k = 0;
  k += (size_t)sprintf(s + k, "{\"key\\n");
  for (size_t i = 0; i < 300; i++)
    s[k++] = 'a';
  k += (size_t)sprintf(s + k, "\":\"");
  for (size_t i = 0; i < n; i++)
    k += (size_t)sprintf(s + k, i % 7 ? "x" : "\\u00e9");
  k += (size_t)sprintf(s + k, "\",\"num\":0.");
  for (size_t i = 0; i < 400; i++)
    s[k++] = '1';
  k += (size_t)sprintf(s + k, "}");
  s[k] = '\0';
  expect(s, true);
  free(s);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_accepts_and_refuses_what_jansson_does),
    cmocka_unit_test(test_values_come_out_as_written),
    cmocka_unit_test(test_nesting_limit_is_jansson_s),
    cmocka_unit_test(test_long_strings_and_keys_with_escapes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

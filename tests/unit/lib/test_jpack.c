/* tp_pack must build the tree json_pack builds, for every kind of format
 * the code uses, and fail where json_pack fails (releasing stolen
 * references either way: ASan's leak check runs these). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "jpack.h"

/* Both builders on the same arguments; trees equal and same key order. */
#define SAME(...)                                                                                                     \
  do {                                                                                                                \
    json_t *want_ = json_pack(__VA_ARGS__);                                                                           \
    json_t *got_ = tp_pack(__VA_ARGS__);                                                                              \
    assert_non_null(want_);                                                                                           \
    assert_non_null(got_);                                                                                            \
    assert_true(json_equal(want_, got_));                                                                             \
    char *a_ = json_dumps(want_, JSON_COMPACT | JSON_ENCODE_ANY);                                                     \
    char *b_ = json_dumps(got_, JSON_COMPACT | JSON_ENCODE_ANY);                                                     \
    assert_string_equal(a_, b_);                                                                                      \
    free(a_);                                                                                                         \
    free(b_);                                                                                                         \
    json_decref(want_);                                                                                               \
    json_decref(got_);                                                                                                \
  } while (0)

static void test_scalars_and_nesting(void **state)
{
  (void)state;
  json_t *o = json_object();
  json_object_set_new(o, "k", json_integer(7));
  SAME("{s:s, s:I, s:i, s:b, s:b, s:n, s:f}", "a", "x", "b", (json_int_t)-9007199254740993LL, "c", -3, "d", 1, "e",
       0, "f", "g", 2.5);
  SAME("{s:{s:{}}, s:[s, i, [], {s:n}], s:O}", "a", "b", "c", "s", 4, "d", "e", o);
  SAME("[s, s, s]", "caf\xc3\xa9", "", "\xf0\x9f\x98\x80");
  SAME("{s:s#, s:s%, s:s+, s+:i, s:s++}", "a", "abcdef", 3, "b", "xyz", (size_t)2, "c", "ab", "cd", "k", "ey", 1,
       "d", "1", "2", "3");
  SAME("{s:s?, s:s?, s:o?, s:O?}", "a", (char *)NULL, "b", "v", "c", (json_t *)NULL, "d", (json_t *)NULL);
  SAME("{s:s*, s:o*, s:O*, s:i}", "a", (char *)NULL, "b", (json_t *)NULL, "c", (json_t *)NULL, "d", 1);
  SAME("[s*, i, o*]", (char *)NULL, 5, (json_t *)NULL);
  SAME("{\n s : s ,\t s : i }", "a", "b", "c", 1);
  SAME("i", 42);
  SAME("s", "top");
  SAME("{s:o}", "x", json_pack("{s:i}", "y", 1));
  SAME("{s:o, s:o}", "dup", json_integer(1), "dup", json_integer(2));
  json_decref(o);
}

/* Errors: NULL for a required value, invalid UTF-8, a bad format, garbage
 * after it. Every 'o' handed over is released (LeakSanitizer). */
static void test_errors_release_references(void **state)
{
  (void)state;
  assert_null(tp_pack("{s:s, s:o}", "a", (char *)NULL, "b", json_object()));
  assert_null(tp_pack("{s:o, s:o}", "a", (json_t *)NULL, "b", json_array()));
  assert_null(tp_pack("{s:o, s:s, s:o}", "a", json_object(), "b", "bad\xff", "c", json_object()));
  assert_null(tp_pack("{s:i}", "bad\xc3", 1));
  assert_null(tp_pack("[s]", "\xed\xa0\x80")); /* a UTF-16 surrogate */
  assert_null(tp_pack("[s]", "\xc0\xaf"));     /* overlong */
  assert_null(tp_pack("[s]", "0123456789abcdef\xff")); /* past the 8-byte ASCII scan */
  assert_null(tp_pack("[s]", "01234567\xc3("));
  SAME("[s]", "0123456789abcdef\xc3\xa9xyz0123456789");
  assert_null(tp_pack("{s:i", "a", 1));
  assert_null(tp_pack("{s:i}x", "a", 1));
  assert_null(tp_pack("{s:q}", "a"));
  assert_null(tp_pack("s+", "a", (char *)NULL));
  assert_null(json_pack("{s:s}", "a", (char *)NULL)); /* the same as jansson */
  assert_null(json_pack("[s]", "\xed\xa0\x80"));
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_scalars_and_nesting),
    cmocka_unit_test(test_errors_release_references),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

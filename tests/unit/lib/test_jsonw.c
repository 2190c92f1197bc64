/* The fast JSON writer must give exactly json_dumps(v, JSON_COMPACT)'s bytes:
 * stored objects, events and replies are compared and replayed byte for
 * byte (idempotent replays, webhook signatures). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "jsonw.h"

/* Both writers on v; the fast one's length must be strlen of its text. */
static void assert_same_as_jansson(const json_t *v)
{
  char *want = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
  size_t len = 12345;
  char *got = tp_json_dump(v, &len);
  assert_non_null(want);
  assert_non_null(got);
  assert_string_equal(got, want);
  assert_int_equal(len, strlen(want));
  free(want);
  free(got);
}

/* Hand-built JSON (tp_jbuf, used for events) gives the same bytes as
 * json_dumps of the same fields. */
static void test_jbuf_matches_jansson(void **state)
{
  (void)state;
  const char *tricky = "k\"ey\\/\t\x01 caf\xc3\xa9";
  json_t *inner = json_pack("{s:s, s:i}", "id", "pi_1", "amount", 1999);
  json_t *o = json_pack("{s:s, s:I, s:O, s:b, s:{s:s, s:n}, s:s}", "id", "evt_1", "created", (json_int_t)-5,
                        "data", inner, "livemode", 0, "request", "id", tricky, "idempotency_key", "type", "x.y");
  char *want = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  char *in = tp_json_dump(inner, NULL);
  struct tp_jbuf b = {0};
  TP_JBUF_STR(&b, "{\"id\":", "evt_1");
  TP_JBUF_INT(&b, ",\"created\":", -5);
  TP_JBUF_LIT(&b, ",\"data\":");
  tp_jbuf_raw(&b, in, strlen(in));
  TP_JBUF_STR(&b, ",\"livemode\":false,\"request\":{\"id\":", tricky);
  TP_JBUF_STR(&b, ",\"idempotency_key\":", NULL);
  TP_JBUF_STR(&b, "},\"type\":", "x.y");
  TP_JBUF_LIT(&b, "}");
  size_t len = 0;
  char *got = tp_jbuf_finish(&b, &len);
  assert_non_null(got);
  assert_string_equal(got, want);
  assert_int_equal(len, strlen(want));
  free(got);
  free(in);
  free(want);
  json_decref(o);
  json_decref(inner);
}

static void test_escapes_and_scalars(void **state)
{
  (void)state;
  json_t *o = json_object();
  json_object_set_new(o, "quote\"back\\slash", json_string("a\"b\\c/d\b\f\n\r\t\x01\x1f\x7f end"));
  json_object_set_new(o, "utf8", json_string("caf\xc3\xa9 \xe2\x82\xac \xe6\x97\xa5\xe6\x9c\xac"));
  json_object_set_new(o, "empty", json_string(""));
  json_object_set_new(o, "min", json_integer(INT64_MIN));
  json_object_set_new(o, "max", json_integer(INT64_MAX));
  json_object_set_new(o, "zero", json_integer(0));
  json_object_set_new(o, "neg", json_integer(-1999));
  json_object_set_new(o, "t", json_true());
  json_object_set_new(o, "f", json_false());
  json_object_set_new(o, "n", json_null());
  json_object_set_new(o, "real", json_real(0.1));
  json_object_set_new(o, "with\nnewline key", json_integer(1));
  assert_same_as_jansson(o);
  json_decref(o);
}

static void test_nesting_and_order(void **state)
{
  (void)state;
  /* Insertion order, not alphabetical: "id" first like every API object. */
  json_t *o = json_pack("{s:s, s:s, s:I, s:{s:{}}, s:[], s:{}, s:[s, i, [], {s:[n, b]}], s:n}", "id", "pi_123",
                        "object", "payment_intent", "amount", (json_int_t)1999, "amount_details", "tip", "list",
                        "metadata", "payment_method_types", "card", 7, "x", 1, "zz", "a");
  assert_non_null(o);
  json_object_set_new(o, "aaa", json_string("last"));
  assert_same_as_jansson(o);
  json_t *arr = json_pack("[O, O, {}]", o, o);
  assert_same_as_jansson(arr);
  json_decref(arr);
  json_decref(o);
}

static void test_refuses_scalars_and_deep_nesting(void **state)
{
  (void)state;
  json_t *s = json_string("x");
  assert_null(tp_json_dump(s, NULL));
  json_decref(s);
  assert_null(tp_json_dump(NULL, NULL));
  /* 600 levels: past the writer's limit, refused rather than recursed. */
  json_t *root = json_array(), *cur = root;
  for (int i = 0; i < 600; i++) {
    json_t *next = json_array();
    json_array_append_new(cur, next);
    cur = next;
  }
  assert_null(tp_json_dump(root, NULL));
  json_decref(root);
  /* 100 levels is fine. */
  root = json_object();
  cur = root;
  for (int i = 0; i < 100; i++) {
    json_t *next = i % 2 ? json_object() : json_array();
    if (json_is_array(cur))
      json_array_append_new(cur, next);
    else
      json_object_set_new(cur, "k", next);
    cur = next;
  }
  assert_same_as_jansson(root);
  json_decref(root);
}

static void test_long_strings_grow_the_buffer(void **state)
{
  (void)state;
  size_t n = 100000;
  char *big = malloc(n + 1);
  assert_non_null(big);
  for (size_t i = 0; i < n; i++)
    big[i] = (char)(i % 97 == 0 ? '"' : 'a' + (int)(i % 26));
  big[n] = '\0';
  json_t *o = json_pack("{s:s, s:[s, s]}", "big", big, "more", big, big);
  assert_same_as_jansson(o);
  json_decref(o);
  free(big);
}

/* Strings are scanned eight bytes at a time: every byte that must be
 * escaped, and bytes next to the ones that must not, at every position of
 * strings of every length around the word size, give json_dumps' bytes. */
static void test_escapes_at_every_word_position(void **state)
{
  (void)state;
  static const unsigned char specials[] = {'"', '\\', 0x01, 0x1f, 0x0a, 0x20, 0x21, 0x5b, 0x5d, 0x7f, 0xc3, '/'};
  for (size_t len = 1; len <= 33; len++)
    for (size_t pos = 0; pos < len; pos++)
      for (size_t k = 0; k < sizeof specials; k++) {
        char buf[40];
        memset(buf, 'a', len);
        buf[pos] = (char)specials[k];
        if (specials[k] == 0xc3) { /* keep it valid UTF-8: é */
          if (pos + 1 >= len)
            continue;
          buf[pos + 1] = (char)0xa9;
        }
        json_t *a = json_array();
        json_array_append_new(a, json_stringn(buf, len));
        assert_int_equal(json_array_size(a), 1);
        assert_same_as_jansson(a);
        json_decref(a);
      }
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_jbuf_matches_jansson),
    cmocka_unit_test(test_escapes_and_scalars),
    cmocka_unit_test(test_nesting_and_order),
    cmocka_unit_test(test_refuses_scalars_and_deep_nesting),
    cmocka_unit_test(test_long_strings_grow_the_buffer),
    cmocka_unit_test(test_escapes_at_every_word_position),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

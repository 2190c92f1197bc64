/* Request parameter parsing (form and JSON) and declarative validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "api/params.h"

static json_t *form(const char *body, struct tp_params_error *err) {
  return tp_params_parse_form(body, strlen(body), err);
}

static json_t *jbody(const char *body, struct tp_params_error *err) {
  return tp_params_parse_json(body, strlen(body), err);
}

/* Parse a form body and compare with the JSON text of the expected tree. */
static void assert_form_equals(const char *body, const char *expected_json) {
  struct tp_params_error err;
  json_t *got = form(body, &err);
  if (!got) fail_msg("parse of '%s' failed: %s", body, err.message);
  json_t *want = json_loads(expected_json, 0, NULL);
  assert_non_null(want);
  if (!json_equal(got, want)) {
    char *s = json_dumps(got, JSON_SORT_KEYS);
    fail_msg("'%s' gave %s, want %s", body, s, expected_json);
  }
  json_decref(got);
  json_decref(want);
}

/* Parse a form body that must fail; returns the error for further checks. */
static struct tp_params_error assert_form_fails(const char *body) {
  struct tp_params_error err;
  memset(&err, 0, sizeof err);
  json_t *got = form(body, &err);
  if (got) {
    char *s = json_dumps(got, JSON_SORT_KEYS);
    fail_msg("'%s' should fail but gave %s", body, s);
  }
  assert_true(err.message[0] != '\0');
  return err;
}

/* ---- form ---- */

static void test_form_simple_pairs(void **state) {
  (void)state;
  assert_form_equals("amount=2000&currency=usd", "{\"amount\":\"2000\",\"currency\":\"usd\"}");
  assert_form_equals("a=&b", "{\"a\":\"\",\"b\":\"\"}");
  assert_form_equals("a=1&&b=2&", "{\"a\":\"1\",\"b\":\"2\"}");
  assert_form_equals("a=x=y", "{\"a\":\"x=y\"}");
}

static void test_form_plus_decodes_to_space(void **state) {
  (void)state;
  assert_form_equals("description=hello+world+%2B1", "{\"description\":\"hello world +1\"}");
}

static void test_form_percent_decoding_including_brackets(void **state) {
  (void)state;
  assert_form_equals("name=J%C3%BCrgen%20K", "{\"name\":\"J\xc3\xbcrgen K\"}");
  assert_form_equals("metadata%5Border_id%5D=6735&expand%5B%5D=x",
                     "{\"metadata\":{\"order_id\":\"6735\"},\"expand\":[\"x\"]}");
  assert_form_equals("a%5bb%5d=lower", "{\"a\":{\"b\":\"lower\"}}");
}

static void test_form_stripe_sdk_body(void **state) {
  (void)state;
  assert_form_equals(
      "amount=2000&currency=usd&payment_method_types[0]=card&metadata[order_id]=6735"
      "&expand[0]=latest_charge",
      "{\"amount\":\"2000\",\"currency\":\"usd\",\"payment_method_types\":[\"card\"],"
      "\"metadata\":{\"order_id\":\"6735\"},\"expand\":[\"latest_charge\"]}");
}

static void test_form_nested_objects(void **state) {
  (void)state;
  assert_form_equals(
      "payment_method_data[type]=card&payment_method_data[card][exp_month]=12"
      "&payment_method_data[card][exp_year]=2030",
      "{\"payment_method_data\":{\"type\":\"card\",\"card\":{\"exp_month\":\"12\","
      "\"exp_year\":\"2030\"}}}");
}

static void test_form_arrays_by_append(void **state) {
  (void)state;
  assert_form_equals("expand[]=a&expand[]=b&expand[]=c", "{\"expand\":[\"a\",\"b\",\"c\"]}");
}

static void test_form_arrays_by_index_in_and_out_of_order(void **state) {
  (void)state;
  assert_form_equals("e[0]=p&e[1]=q&e[2]=r", "{\"e\":[\"p\",\"q\",\"r\"]}");
  assert_form_equals("e[2]=r&e[0]=p&e[1]=q", "{\"e\":[\"p\",\"q\",\"r\"]}");
  assert_form_equals("e[1]=x&e[0]=y", "{\"e\":[\"y\",\"x\"]}");
}

static void test_form_arrays_of_objects(void **state) {
  (void)state;
  assert_form_equals("items[0][price]=p1&items[0][quantity]=2&items[1][price]=p2",
                     "{\"items\":[{\"price\":\"p1\",\"quantity\":\"2\"},{\"price\":\"p2\"}]}");
  assert_form_equals("items[1][price]=p2&items[0][price]=p1&items[1][tax][0]=t",
                     "{\"items\":[{\"price\":\"p1\"},{\"price\":\"p2\",\"tax\":[\"t\"]}]}");
  assert_form_equals("d[][a]=1&d[][b]=2&d[][a]=3",
                     "{\"d\":[{\"a\":\"1\",\"b\":\"2\"},{\"a\":\"3\"}]}");
}

static void test_form_metadata_numeric_keys_stay_keys(void **state) {
  (void)state;
  assert_form_equals("metadata[123]=a&metadata[0]=b", "{\"metadata\":{\"123\":\"a\",\"0\":\"b\"}}");
}

static void test_form_sparse_index_rejected(void **state) {
  (void)state;
  struct tp_params_error err = assert_form_fails("e[0]=a&e[2]=b");
  assert_string_equal(err.param, "e");
  err = assert_form_fails("e[1]=a");
  assert_string_equal(err.param, "e");
  err = assert_form_fails("x[a][0]=1&x[a][3]=2");
  assert_string_equal(err.param, "x[a]");
  assert_form_fails("e[01]=a");
  assert_form_fails("e[100]=a");
}

static void test_form_conflicting_shapes_rejected(void **state) {
  (void)state;
  struct tp_params_error err = assert_form_fails("a=1&a[b]=2");
  assert_string_equal(err.param, "a[b]");
  assert_form_fails("a[b]=2&a=1");
  assert_form_fails("e[]=1&e[0]=2");
  assert_form_fails("e[0]=1&e[]=2");
  assert_form_fails("e[]=1&e=2");
  assert_form_fails("a[b]=1&a[0]=2");
  assert_form_fails("a[0]=1&a[b]=2");
}

static void test_form_malformed_names_rejected(void **state) {
  (void)state;
  assert_form_fails("=x");
  assert_form_fails("[a]=b");
  assert_form_fails("a[b=1");
  assert_form_fails("a[b]c=1");
  assert_form_fails("a]=1");
  assert_form_fails("a[b[c]]=1");
}

static void test_form_depth_limit(void **state) {
  (void)state;
  /* 8 bracket levels is the limit; 9 is one too many. */
  assert_form_equals("a[b][c][d][e][f][g][h][i]=1",
                     "{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":{\"h\":{\"i\":\"1\"}}}}}}}}}");
  struct tp_params_error err = assert_form_fails("a[b][c][d][e][f][g][h][i][j]=1");
  assert_non_null(strstr(err.message, "deep"));
}

static void test_form_count_limit(void **state) {
  (void)state;
  char *body = malloc(16 * (TP_PARAMS_MAX_COUNT + 1));
  size_t n = 0;
  for (int i = 0; i < TP_PARAMS_MAX_COUNT; i++)
    n += (size_t)sprintf(body + n, "k%d=v&", i);
  struct tp_params_error err;
  json_t *ok = tp_params_parse_form(body, n, &err);
  assert_non_null(ok);
  assert_int_equal(json_object_size(ok), TP_PARAMS_MAX_COUNT);
  json_decref(ok);
  n += (size_t)sprintf(body + n, "one=more");
  assert_null(tp_params_parse_form(body, n, &err));
  assert_non_null(strstr(err.message, "Too many parameters"));
  free(body);

  /* An array holds at most TP_PARAMS_MAX_ARRAY elements. */
  char arr[2048];
  n = 0;
  for (int i = 0; i <= TP_PARAMS_MAX_ARRAY; i++) n += (size_t)sprintf(arr + n, "x[]=1&");
  assert_null(tp_params_parse_form(arr, n, &err));
  assert_string_equal(err.param, "x[]");
}

static void test_form_key_and_value_length_limits(void **state) {
  (void)state;
  char key[TP_PARAMS_MAX_KEY + 8];
  memset(key, 'k', TP_PARAMS_MAX_KEY);
  strcpy(key + TP_PARAMS_MAX_KEY, "=v");
  struct tp_params_error err;
  json_t *ok = form(key, &err);
  assert_non_null(ok);
  json_decref(ok);
  memmove(key + 1, key, strlen(key) + 1);
  assert_null(form(key, &err));

  size_t vl = TP_PARAMS_MAX_VALUE;
  char *body = malloc(vl + 8);
  memcpy(body, "v=", 2);
  memset(body + 2, 'x', vl);
  ok = tp_params_parse_form(body, vl + 2, &err);
  assert_non_null(ok);
  assert_int_equal(json_string_length(json_object_get(ok, "v")), vl);
  json_decref(ok);
  body[vl + 2] = 'x';
  assert_null(tp_params_parse_form(body, vl + 3, &err));
  assert_string_equal(err.param, "v");
  free(body);
}

static void test_form_invalid_percent_escapes(void **state) {
  (void)state;
  assert_form_fails("a=%");
  assert_form_fails("a=%4");
  assert_form_fails("a=%zz");
  assert_form_fails("a%=1");
  struct tp_params_error err = assert_form_fails("card[number]=%G1");
  assert_string_equal(err.param, "card[number]");
}

static void test_form_invalid_utf8(void **state) {
  (void)state;
  assert_form_fails("a=%C3");         /* truncated */
  assert_form_fails("a=%C0%AF");      /* overlong '/' */
  assert_form_fails("a=%E0%80%AF");   /* overlong 3-byte */
  assert_form_fails("a=%ED%A0%80");   /* surrogate U+D800 */
  assert_form_fails("a=%F4%90%80%80"); /* U+110000 */
  assert_form_fails("a=%FF");
  assert_form_fails("%80=1");
  assert_form_equals("a=%F0%9F%92%B3", "{\"a\":\"\xf0\x9f\x92\xb3\"}"); /* U+1F4B3 */
  assert_form_equals("a=%F4%8F%BF%BF", "{\"a\":\"\xf4\x8f\xbf\xbf\"}"); /* U+10FFFF */
}

static void test_form_nul_rejected(void **state) {
  (void)state;
  assert_form_fails("a=%00");
  assert_form_fails("a%00=1");
  struct tp_params_error err;
  static const char raw[] = "a=b\0c";
  assert_null(tp_params_parse_form(raw, sizeof raw - 1, &err));
}

static void test_form_empty_body_gives_empty_object(void **state) {
  (void)state;
  struct tp_params_error err;
  json_t *o = tp_params_parse_form("", 0, &err);
  assert_true(json_is_object(o));
  assert_int_equal(json_object_size(o), 0);
  json_decref(o);
  o = tp_params_parse_form(NULL, 0, &err);
  assert_true(json_is_object(o));
  json_decref(o);
}

static void test_form_duplicate_scalar_last_wins(void **state) {
  (void)state;
  assert_form_equals("a=1&a=2", "{\"a\":\"2\"}");
  assert_form_equals("m[k]=1&m[k]=2", "{\"m\":{\"k\":\"2\"}}");
}

static void test_form_errors_never_echo_values(void **state) {
  (void)state;
  struct tp_params_error err = assert_form_fails("card[number]=4242424242424242%ZZ");
  assert_null(strstr(err.message, "4242"));
  err = assert_form_fails("card[number]=4242424242424242%C0%80");
  assert_null(strstr(err.message, "4242"));
  assert_string_equal(err.param, "card[number]");
}

/* ---- JSON ---- */

static void test_json_valid(void **state) {
  (void)state;
  struct tp_params_error err;
  json_t *o = jbody("{\"amount\":2000,\"confirm\":true,\"rate\":1.5,\"m\":{\"k\":\"v\"}}", &err);
  assert_non_null(o);
  assert_int_equal(json_integer_value(json_object_get(o, "amount")), 2000);
  assert_true(json_is_real(json_object_get(o, "rate")));
  json_decref(o);
  o = jbody("{\"n\":-9223372036854775808}", &err);
  assert_non_null(o);
  assert_true(json_integer_value(json_object_get(o, "n")) == INT64_MIN);
  json_decref(o);
  o = tp_params_parse_json("", 0, &err);
  assert_true(json_is_object(o));
  json_decref(o);
}

static void test_json_root_must_be_object(void **state) {
  (void)state;
  struct tp_params_error err;
  assert_null(jbody("[1,2]", &err));
  assert_non_null(strstr(err.message, "object"));
  assert_null(jbody("\"x\"", &err));
  assert_null(jbody("42", &err));
}

static void test_json_deep_nesting_rejected(void **state) {
  (void)state;
  struct tp_params_error err;
  /* Eight containers below the root pass, nine fail. */
  json_t *o = jbody("{\"a\":[[[[[[[{\"z\":1}]]]]]]]}", &err);
  assert_non_null(o);
  json_decref(o);
  assert_null(jbody("{\"a\":[[[[[[[[{\"z\":1}]]]]]]]]}", &err));
  assert_non_null(strstr(err.message, "deep"));
  char deep[5000];
  size_t n = 0;
  deep[n++] = '{';
  deep[n++] = '"';
  deep[n++] = 'a';
  deep[n++] = '"';
  deep[n++] = ':';
  for (int i = 0; i < 2400; i++) deep[n++] = '[';
  assert_null(tp_params_parse_json(deep, n, &err));
}

static void test_json_duplicate_keys_rejected(void **state) {
  (void)state;
  struct tp_params_error err;
  assert_null(jbody("{\"a\":1,\"a\":2}", &err));
  assert_non_null(strstr(err.message, "duplicate"));
}

static void test_json_huge_integer_rejected(void **state) {
  (void)state;
  struct tp_params_error err;
  assert_null(jbody("{\"amount\":9223372036854775808}", &err));
  assert_non_null(strstr(err.message, "integer too large"));
  assert_null(strstr(err.message, "9223372036854775808"));
}

static void test_json_malformed_never_echoes(void **state) {
  (void)state;
  struct tp_params_error err;
  assert_null(jbody("{\"card\":{\"number\":4242424242424242x}}", &err));
  assert_non_null(strstr(err.message, "Invalid JSON"));
  assert_null(strstr(err.message, "4242"));
  assert_null(jbody("{", &err));
  assert_null(jbody("{\"a\":\"\\u0000\"}", &err));
  assert_null(tp_params_parse_json("{\"a\":\"\xc0\xaf\"}", 12, &err));
}

/* ---- check ---- */

static const char *const capture_methods[] = {"automatic", "manual", NULL};

static const char *const connect_why[] = {"no Connect", NULL};

static const struct tp_pspec card_spec[] = {
    {"number", TP_P_STRING, NULL, NULL},
    {"exp_month", TP_P_INT, NULL, NULL},
    {"exp_year", TP_P_INT, NULL, NULL},
    {"cvc", TP_P_STRING, NULL, NULL},
    {NULL, TP_P_ANY, NULL, NULL},
};
static const struct tp_pspec pmd_spec[] = {
    {"type", TP_P_STRING, NULL, NULL},
    {"card", TP_P_OBJECT, card_spec, NULL},
    {NULL, TP_P_ANY, NULL, NULL},
};
static const struct tp_pspec pi_spec[] = {
    {"amount", TP_P_INT, NULL, NULL},
    {"currency", TP_P_STRING, NULL, NULL},
    {"confirm", TP_P_BOOL, NULL, NULL},
    {"capture_method", TP_P_ENUM, NULL, capture_methods},
    {"metadata", TP_P_METADATA, NULL, NULL},
    {"payment_method_data", TP_P_OBJECT, pmd_spec, NULL},
    {"expand", TP_P_STRLIST, NULL, NULL},
    {"created", TP_P_RANGE, NULL, NULL},
    {"on_behalf_of", TP_P_UNSUPPORTED, NULL, connect_why},
    {"hooks", TP_P_UNSUPPORTED, NULL, NULL},
    {NULL, TP_P_ANY, NULL, NULL},
};

/* Parse a form body, run the PaymentIntent spec, return the rc. */
static int check_form(const char *body, json_t **out, struct tp_params_error *err) {
  json_t *o = form(body, err);
  if (!o) fail_msg("parse of '%s' failed: %s", body, err->message);
  int rc = tp_params_check(o, pi_spec, err);
  if (out)
    *out = o;
  else
    json_decref(o);
  return rc;
}

static void test_check_accepts_and_normalizes(void **state) {
  (void)state;
  struct tp_params_error err;
  json_t *o;
  assert_int_equal(check_form("amount=2000&currency=usd&confirm=true&capture_method=manual"
                              "&payment_method_data[card][exp_month]=12&expand[]=latest_charge"
                              "&metadata[n]=1",
                              &o, &err),
                   0);
  int64_t amount;
  bool confirm;
  const char *cur;
  assert_true(tp_param_int(o, "amount", &amount));
  assert_true(amount == 2000);
  assert_true(tp_param_bool(o, "confirm", &confirm));
  assert_true(confirm);
  assert_true(tp_param_str(o, "currency", &cur));
  assert_string_equal(cur, "usd");
  assert_false(tp_param_int(o, "currency", &amount));
  assert_false(tp_param_str(o, "missing", &cur));
  json_t *em = json_object_get(json_object_get(json_object_get(o, "payment_method_data"), "card"),
                               "exp_month");
  assert_true(json_is_integer(em));
  assert_int_equal(json_integer_value(em), 12);
  json_decref(o);
}

static void test_check_unknown_key_names_full_param(void **state) {
  (void)state;
  struct tp_params_error err;
  assert_int_equal(check_form("amount=1&foo=bar", NULL, &err), -1);
  assert_string_equal(err.message, "Received unknown parameter: foo");
  assert_string_equal(err.param, "foo");
  assert_int_equal(check_form("payment_method_data[card][foo]=1", NULL, &err), -1);
  assert_string_equal(err.message, "Received unknown parameter: payment_method_data[card][foo]");
  assert_string_equal(err.param, "payment_method_data[card][foo]");
  assert_int_equal(check_form("created[gt]=1&created[eq]=2", NULL, &err), -1);
  assert_string_equal(err.param, "created[eq]");
}

static void test_check_int_coercion(void **state) {
  (void)state;
  struct tp_params_error err;
  json_t *o;
  int64_t v;
  assert_int_equal(check_form("amount=-9223372036854775808", &o, &err), 0);
  assert_true(tp_param_int(o, "amount", &v) && v == INT64_MIN);
  json_decref(o);
  assert_int_equal(check_form("amount=9223372036854775807", &o, &err), 0);
  assert_true(tp_param_int(o, "amount", &v) && v == INT64_MAX);
  json_decref(o);
  /* "" asks to unset, and an amount cannot be unset (Stripe's answer) */
  assert_int_equal(check_form("amount=", NULL, &err), -1);
  assert_string_equal(err.param, "amount");
  assert_non_null(strstr(err.message, "cannot be unset"));

  assert_int_equal(check_form("amount=abc", NULL, &err), -1);
  assert_string_equal(err.message, "Invalid integer: abc");
  assert_string_equal(err.param, "amount");
  static const char *const bad[] = {"amount=9223372036854775808", "amount=-9223372036854775809",
                                    "amount=%2B5", "amount=+5", "amount=5+", "amount=1.0",
                                    "amount=-", "amount=0x10", "amount[a]=1", NULL};
  for (const char *const *b = bad; *b; b++) {
    if (check_form(*b, NULL, &err) != -1) fail_msg("%s accepted", *b);
    assert_string_equal(err.param, "amount");
  }
  assert_int_equal(check_form("payment_method_data[card][exp_month]=x", NULL, &err), -1);
  assert_string_equal(err.param, "payment_method_data[card][exp_month]");

  /* JSON integers are taken as they are; reals and booleans are not integers. */
  o = jbody("{\"amount\":5}", &err);
  assert_int_equal(tp_params_check(o, pi_spec, &err), 0);
  json_decref(o);
  o = jbody("{\"amount\":5.5}", &err);
  assert_int_equal(tp_params_check(o, pi_spec, &err), -1);
  json_decref(o);
}

static void test_check_bool_coercion(void **state) {
  (void)state;
  struct tp_params_error err;
  json_t *o;
  bool b = true;
  assert_int_equal(check_form("confirm=false", &o, &err), 0);
  assert_true(tp_param_bool(o, "confirm", &b));
  assert_false(b);
  json_decref(o);
  assert_int_equal(check_form("confirm=yes", NULL, &err), -1);
  assert_string_equal(err.message, "Invalid boolean: yes");
  /* stripe-python sends str(True): any case of true / false is a boolean. */
  b = false;
  assert_int_equal(check_form("confirm=True", &o, &err), 0);
  assert_true(tp_param_bool(o, "confirm", &b));
  assert_true(b);
  json_decref(o);
  assert_int_equal(check_form("confirm=FALSE", &o, &err), 0);
  assert_true(tp_param_bool(o, "confirm", &b));
  assert_false(b);
  json_decref(o);
  assert_int_equal(check_form("confirm=truee", NULL, &err), -1);
  o = jbody("{\"confirm\":true}", &err);
  assert_int_equal(tp_params_check(o, pi_spec, &err), 0);
  assert_true(json_is_true(json_object_get(o, "confirm")));
  json_decref(o);
}

static void test_check_enum(void **state) {
  (void)state;
  struct tp_params_error err;
  assert_int_equal(check_form("capture_method=automatic", NULL, &err), 0);
  assert_int_equal(check_form("capture_method=later", NULL, &err), -1);
  assert_string_equal(err.message, "Invalid capture_method: must be one of automatic, manual");
  assert_string_equal(err.param, "capture_method");
}

static void test_check_metadata_limits(void **state) {
  (void)state;
  struct tp_params_error err;
  json_t *o;
  char body[8192];
  size_t n = 0;
  for (int i = 0; i < 50; i++) n += (size_t)sprintf(body + n, "metadata[k%d]=v&", i);
  body[n - 1] = '\0';
  assert_int_equal(check_form(body, NULL, &err), 0);
  sprintf(body + n - 1, "&metadata[k50]=v");
  assert_int_equal(check_form(body, NULL, &err), -1);
  assert_string_equal(err.param, "metadata");

  char k40[41], k41[42];
  memset(k40, 'a', 40);
  k40[40] = '\0';
  memset(k41, 'a', 41);
  k41[41] = '\0';
  snprintf(body, sizeof body, "metadata[%s]=v", k40);
  assert_int_equal(check_form(body, NULL, &err), 0);
  snprintf(body, sizeof body, "metadata[%s]=v", k41);
  assert_int_equal(check_form(body, NULL, &err), -1);

  n = (size_t)sprintf(body, "metadata[k]=");
  memset(body + n, 'v', 500);
  body[n + 500] = '\0';
  assert_int_equal(check_form(body, NULL, &err), 0);
  strcat(body, "v");
  assert_int_equal(check_form(body, NULL, &err), -1);
  assert_string_equal(err.param, "metadata[k]");
  assert_null(strstr(err.message, "vvvv"));

  /* Nested values and bracketed keys are not metadata. */
  assert_int_equal(check_form("metadata[a][b]=1", NULL, &err), -1);
  assert_string_equal(err.param, "metadata[a]");
  o = jbody("{\"metadata\":{\"a[b]\":\"1\"}}", &err);
  assert_int_equal(tp_params_check(o, pi_spec, &err), -1);
  json_decref(o);

  /* metadata= unsets everything; JSON ints and bools become strings. */
  assert_int_equal(check_form("metadata=", NULL, &err), 0);
  o = jbody("{\"metadata\":{\"n\":42,\"b\":false,\"gone\":null}}", &err);
  assert_int_equal(tp_params_check(o, pi_spec, &err), 0);
  json_t *m = json_object_get(o, "metadata");
  assert_string_equal(json_string_value(json_object_get(m, "n")), "42");
  assert_string_equal(json_string_value(json_object_get(m, "b")), "false");
  assert_string_equal(json_string_value(json_object_get(m, "gone")), "");
  json_decref(o);
}

static void test_check_range(void **state) {
  (void)state;
  struct tp_params_error err;
  json_t *o;
  assert_int_equal(check_form("created[gte]=5&created[lt]=10", &o, &err), 0);
  json_t *c = json_object_get(o, "created");
  assert_int_equal(json_integer_value(json_object_get(c, "gte")), 5);
  assert_int_equal(json_integer_value(json_object_get(c, "lt")), 10);
  json_decref(o);
  assert_int_equal(check_form("created=5", &o, &err), 0);
  int64_t v;
  assert_true(tp_param_int(o, "created", &v) && v == 5);
  json_decref(o);
  assert_int_equal(check_form("created[gte]=soon", NULL, &err), -1);
  assert_string_equal(err.param, "created[gte]");
}

static void test_check_strlist(void **state) {
  (void)state;
  struct tp_params_error err;
  assert_int_equal(check_form("expand[0]=a&expand[1]=b", NULL, &err), 0);
  assert_int_equal(check_form("expand=latest_charge", NULL, &err), -1);
  assert_string_equal(err.param, "expand");
  assert_int_equal(check_form("expand[0][x]=1", NULL, &err), -1);
  assert_string_equal(err.param, "expand[0]");
}

/* A parameter of a missing feature: refused by name with the reason, in
 * any shape; unset ("") passes. */
static void test_check_unsupported(void **state) {
  (void)state;
  struct tp_params_error err;
  assert_int_equal(check_form("amount=1&on_behalf_of=acct_1", NULL, &err), -1);
  assert_string_equal(err.param, "on_behalf_of");
  assert_string_equal(err.message, "Parameter not supported by Turnpike: on_behalf_of (no Connect)");
  assert_int_equal(check_form("hooks[inputs][tax][calculation]=x", NULL, &err), -1);
  assert_string_equal(err.param, "hooks");
  assert_string_equal(err.message, "Parameter not supported by Turnpike: hooks (not implemented)");
  assert_int_equal(check_form("amount=1&on_behalf_of=", NULL, &err), 0);
}

static void test_check_object_empty_string_means_unset(void **state) {
  (void)state;
  struct tp_params_error err;
  json_t *o;
  assert_int_equal(check_form("payment_method_data=", &o, &err), 0);
  assert_string_equal(json_string_value(json_object_get(o, "payment_method_data")), "");
  json_decref(o);
  assert_int_equal(check_form("payment_method_data=x", NULL, &err), -1);
}

static void test_check_error_never_contains_card_number(void **state) {
  (void)state;
  struct tp_params_error err;
  static const char *const bodies[] = {
      "confirm=4242424242424242",
      "amount=42424242424242424242",
      "capture_method=4242424242424242",
      "payment_method_data[card][exp_month]=4242424242424242x",
      "payment_method_data[card][number][x]=4242424242424242",
      "payment_method_data[card][exp_year]=4242+4242+4242+4242",
      NULL};
  for (const char *const *b = bodies; *b; b++) {
    assert_int_equal(check_form(*b, NULL, &err), -1);
    assert_null(strstr(err.message, "4242424242"));
    assert_null(strstr(err.message, "4242 4242"));
    assert_null(strstr(err.param, "4242"));
  }
  json_t *o = jbody("{\"payment_method_data\":{\"card\":{\"cvc\":123}}}", &err);
  assert_int_equal(tp_params_check(o, pi_spec, &err), -1);
  assert_string_equal(err.message, "Invalid value for payment_method_data[card][cvc]");
  json_decref(o);
  o = jbody("{\"payment_method_data\":{\"card\":{\"number\":4242424242424242}}}", &err);
  assert_int_equal(tp_params_check(o, pi_spec, &err), -1);
  assert_string_equal(err.message, "Invalid value for payment_method_data[card][number]");
  json_decref(o);
  /* A long value is never echoed, even when harmless. */
  assert_int_equal(check_form("confirm=abcdefghijabcdefghijabcdefghijabcdefghijX", NULL, &err), -1);
  assert_null(strstr(err.message, "abcdefghij"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_form_simple_pairs),
      cmocka_unit_test(test_form_plus_decodes_to_space),
      cmocka_unit_test(test_form_percent_decoding_including_brackets),
      cmocka_unit_test(test_form_stripe_sdk_body),
      cmocka_unit_test(test_form_nested_objects),
      cmocka_unit_test(test_form_arrays_by_append),
      cmocka_unit_test(test_form_arrays_by_index_in_and_out_of_order),
      cmocka_unit_test(test_form_arrays_of_objects),
      cmocka_unit_test(test_form_metadata_numeric_keys_stay_keys),
      cmocka_unit_test(test_form_sparse_index_rejected),
      cmocka_unit_test(test_form_conflicting_shapes_rejected),
      cmocka_unit_test(test_form_malformed_names_rejected),
      cmocka_unit_test(test_form_depth_limit),
      cmocka_unit_test(test_form_count_limit),
      cmocka_unit_test(test_form_key_and_value_length_limits),
      cmocka_unit_test(test_form_invalid_percent_escapes),
      cmocka_unit_test(test_form_invalid_utf8),
      cmocka_unit_test(test_form_nul_rejected),
      cmocka_unit_test(test_form_empty_body_gives_empty_object),
      cmocka_unit_test(test_form_duplicate_scalar_last_wins),
      cmocka_unit_test(test_form_errors_never_echo_values),
      cmocka_unit_test(test_json_valid),
      cmocka_unit_test(test_json_root_must_be_object),
      cmocka_unit_test(test_json_deep_nesting_rejected),
      cmocka_unit_test(test_json_duplicate_keys_rejected),
      cmocka_unit_test(test_json_huge_integer_rejected),
      cmocka_unit_test(test_json_malformed_never_echoes),
      cmocka_unit_test(test_check_accepts_and_normalizes),
      cmocka_unit_test(test_check_unknown_key_names_full_param),
      cmocka_unit_test(test_check_int_coercion),
      cmocka_unit_test(test_check_bool_coercion),
      cmocka_unit_test(test_check_enum),
      cmocka_unit_test(test_check_metadata_limits),
      cmocka_unit_test(test_check_range),
      cmocka_unit_test(test_check_strlist),
      cmocka_unit_test(test_check_unsupported),
      cmocka_unit_test(test_check_object_empty_string_means_unset),
      cmocka_unit_test(test_check_error_never_contains_card_number),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

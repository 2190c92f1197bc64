/* The search query language: what parses, what is refused and why, and what
 * a parsed query matches. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "api/search.h"

static const char *PI = "{\"id\":\"pi_1\",\"amount\":2500,\"created\":1700000000,\"currency\":\"usd\","
                        "\"customer\":\"cus_Ab1\",\"status\":\"succeeded\","
                        "\"metadata\":{\"order_id\":\"6735\",\"Kind\":\"Gift\"}}";
static const char *CH = "{\"id\":\"ch_1\",\"amount\":2500,\"refunded\":false,\"disputed\":false,\"customer\":null,"
                        "\"payment_method_details\":{\"card\":{\"brand\":\"visa\",\"last4\":\"4242\",\"exp_month\":12}},"
                        "\"metadata\":{}}";
static const char *CU = "{\"id\":\"cus_1\",\"email\":\"Amy@RocketRides.io\",\"name\":\"Amy O'Brien\",\"phone\":null,"
                        "\"metadata\":{}}";

/* Parse q against fields and evaluate it on the object text. */
static int eval(const char *q, const struct tp_search_field *fields, const char *obj_text)
{
  struct tp_search s;
  char err[200];
  if (!tp_search_parse(q, fields, &s, err, sizeof err))
    fail_msg("'%s' refused: %s", q, err);
  json_t *obj = json_loads(obj_text, 0, NULL);
  assert_non_null(obj);
  int m = tp_search_match(&s, obj);
  json_decref(obj);
  return m;
}

static void assert_refused(const char *q, const struct tp_search_field *fields, const char *needle)
{
  struct tp_search s;
  char err[200] = "";
  if (tp_search_parse(q, fields, &s, err, sizeof err))
    fail_msg("'%s' was accepted", q);
  if (!strstr(err, needle))
    fail_msg("'%s' refused with '%s', want it to mention '%s'", q, err, needle);
}

static void test_exact_and_quotes(void **state)
{
  (void)state;
  const struct tp_search_field *f = tp_search_fields_payment_intents;
  assert_true(eval("status:'succeeded'", f, PI));
  assert_true(eval("status:\"SUCCEEDED\"", f, PI)); /* enums ignore case */
  assert_false(eval("status:'canceled'", f, PI));
  assert_true(eval("currency:'usd' AND metadata['order_id']:'6735'", f, PI));
  assert_true(eval("metadata[\"order_id\"]:\"6735\"", f, PI));
  assert_false(eval("metadata['order_id']:'6736'", f, PI));
  assert_false(eval("metadata['Kind']:'gift'", f, PI)); /* metadata is case-sensitive */
  assert_true(eval("customer:'cus_Ab1'", f, PI));
  assert_false(eval("customer:'cus_ab1'", f, PI)); /* ids too */
}

static void test_numbers(void **state)
{
  (void)state;
  const struct tp_search_field *f = tp_search_fields_payment_intents;
  assert_true(eval("amount:2500", f, PI));
  assert_true(eval("amount:'2500'", f, PI));
  assert_true(eval("amount>2499", f, PI));
  assert_false(eval("amount>2500", f, PI));
  assert_true(eval("amount>=2500", f, PI));
  assert_true(eval("amount<=2500 amount<2501", f, PI));
  assert_false(eval("amount<2500", f, PI));
  assert_true(eval("created>1699999999 AND created<1700000001", f, PI));
  assert_true(eval("amount>-1", f, PI));
}

static void test_and_or_negation_null(void **state)
{
  (void)state;
  const struct tp_search_field *f = tp_search_fields_payment_intents;
  assert_true(eval("status:'canceled' OR amount:2500", f, PI));
  assert_false(eval("status:'canceled' OR amount:1", f, PI));
  assert_false(eval("status:'canceled' and amount:2500", f, PI)); /* keywords ignore case */
  assert_true(eval("-status:'canceled'", f, PI));
  assert_false(eval("-currency:'usd'", f, PI));
  assert_true(eval("metadata['nope']:null", f, PI));
  assert_false(eval("metadata['order_id']:null", f, PI));
  assert_true(eval("-metadata['order_id']:null", f, PI));
  assert_false(eval("customer:null", f, PI));
  assert_true(eval("  amount:2500   ", f, PI));
}

static void test_charge_fields(void **state)
{
  (void)state;
  const struct tp_search_field *f = tp_search_fields_charges;
  /* Stripe: refunded:false is partly refunded, refunded:null not at all */
  assert_true(eval("payment_method_details.card.last4:'4242' refunded:null", f, CH));
  assert_false(eval("refunded:false", f, CH));
  assert_false(eval("refunded:true", f, CH));
  assert_true(eval("payment_method_details.card.last4:4242", f, CH)); /* digits need no quotes */
  assert_true(eval("payment_method_details.card.exp_month:12", f, CH));
  assert_true(eval("customer:null", f, CH));
  assert_false(eval("payment_method_details.card.brand:'mastercard'", f, CH));
  /* a flag an older stored charge does not carry is false */
  assert_true(eval("disputed:false", f, "{\"id\":\"ch_2\"}"));
  assert_false(eval("disputed:true", f, "{\"id\":\"ch_2\"}"));
}

static void test_substring(void **state)
{
  (void)state;
  const struct tp_search_field *f = tp_search_fields_customers;
  assert_true(eval("email~'rocket'", f, CU));
  assert_true(eval("email:'amy@rocketrides.io'", f, CU));
  assert_false(eval("email~'rockets'", f, CU));
  assert_true(eval("name:'Amy O\\'Brien'", f, CU));
  assert_true(eval("name:\"Amy O'Brien\"", f, CU));
  assert_true(eval("phone:null", f, CU));
}

static void test_refusals(void **state)
{
  (void)state;
  const struct tp_search_field *pi = tp_search_fields_payment_intents;
  const struct tp_search_field *cu = tp_search_fields_customers;
  assert_refused("", pi, "empty");
  assert_refused("   ", pi, "empty");
  assert_refused("email:'a@b.c'", pi, "unsupported search field");
  assert_refused("amount", pi, "operator");
  assert_refused("amount:", pi, "value");
  assert_refused("amount:abc", pi, "integer");
  assert_refused("amount~'100'", pi, "substring");
  assert_refused("status>'a'", pi, "exact");
  assert_refused("status:succeeded", pi, "quoted");
  assert_refused("status:'succeeded", pi, "Unterminated");
  assert_refused("a:1 OR b:2", pi, "unsupported");
  assert_refused("amount:1 OR amount:2 AND amount:3", pi, "AND and OR");
  assert_refused("amount:1 OR amount:2 amount:3", pi, "AND and OR");
  assert_refused("amount:1 AND", pi, "conjunction");
  assert_refused("metadata:'x'", pi, "by key");
  assert_refused("status['x']:'y'", pi, "brackets");
  assert_refused("amount>null", pi, "null");
  assert_refused("email~'am'", cu, "3 characters");
  assert_refused("amount:1 amount:2 amount:3 amount:4 amount:5 amount:6 amount:7 amount:8 amount:9 amount:10 amount:11",
                 pi, "10 clauses");
  assert_refused("status:'a\\b'", pi, "backslash");
  assert_refused("status:'a'b", pi, "space");
  /* a query that holds a card number is never echoed */
  struct tp_search s;
  char err[200];
  assert_false(tp_search_parse("amount:1 4242424242424242", pi, &s, err, sizeof err));
  assert_null(strstr(err, "4242424242"));
  char big[1100];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  assert_refused(big, pi, "1000");
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_exact_and_quotes), cmocka_unit_test(test_numbers),
    cmocka_unit_test(test_and_or_negation_null), cmocka_unit_test(test_charge_fields),
    cmocka_unit_test(test_substring), cmocka_unit_test(test_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* ISO 4217 table lookups, amount limits, exact formatting/parsing and the
 * half-even muldiv used for fees and FX. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "core/currency.h"

static const struct tp_currency *cur(const char *code)
{
  const struct tp_currency *c = tp_currency_find(code);
  if (c == NULL)
    fail_msg("currency %s not found", code);
  return c;
}

static void test_find_is_case_insensitive(void **state)
{
  (void)state;
  const struct tp_currency *a = tp_currency_find("usd");
  assert_non_null(a);
  assert_string_equal(a->code, "usd");
  assert_int_equal(a->numeric, 840);
  assert_ptr_equal(tp_currency_find("USD"), a);
  assert_ptr_equal(tp_currency_find("Usd"), a);
  assert_string_equal(cur("EUR")->code, "eur");
}

static void test_find_rejects_malformed_and_unknown_codes(void **state)
{
  (void)state;
  assert_null(tp_currency_find("us"));
  assert_null(tp_currency_find("usdd"));
  assert_null(tp_currency_find(""));
  assert_null(tp_currency_find(NULL));
  assert_null(tp_currency_find("u d"));
  assert_null(tp_currency_find("us1"));
  assert_null(tp_currency_find("usd "));
  assert_null(tp_currency_find("abc"));
  /* Units without a minor unit are not currencies one can charge in. */
  const char *excluded[] = {"xxx", "xts", "xau", "xag", "xpt", "xpd", "xdr",
                            "xsu", "xua", "xba", "xbb", "xbc", "xbd", "XXX"};
  for (size_t i = 0; i < sizeof excluded / sizeof excluded[0]; i++)
    if (tp_currency_find(excluded[i]) != NULL)
      fail_msg("%s should be unknown", excluded[i]);
}

static void test_exponents(void **state)
{
  (void)state;
  struct {
    const char *code;
    unsigned numeric, exponent;
  } want[] = {
    {"usd", 840, 2}, {"eur", 978, 2}, {"jpy", 392, 0}, {"krw", 410, 0},
    {"kwd", 414, 3}, {"bhd", 48, 3},  {"jod", 400, 3}, {"omr", 512, 3},
    {"tnd", 788, 3}, {"lyd", 434, 3}, {"iqd", 368, 3}, {"clp", 152, 0},
    {"isk", 352, 0}, {"vnd", 704, 0}, {"xof", 952, 0}, {"xaf", 950, 0},
    {"xpf", 953, 0}, {"ugx", 800, 0}, {"pyg", 600, 0}, {"rwf", 646, 0},
    {"kmf", 174, 0}, {"gnf", 324, 0}, {"djf", 262, 0}, {"bif", 108, 0},
    {"vuv", 548, 0}, {"clf", 990, 4}, {"uyw", 927, 4}, {"gbp", 826, 2},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    const struct tp_currency *c = cur(want[i].code);
    if (c->numeric != want[i].numeric || c->exponent != want[i].exponent)
      fail_msg("%s: got %u/%u want %u/%u", want[i].code, c->numeric, c->exponent,
               want[i].numeric, want[i].exponent);
  }
}

static void test_by_numeric(void **state)
{
  (void)state;
  assert_ptr_equal(tp_currency_by_numeric(840), cur("usd"));
  assert_ptr_equal(tp_currency_by_numeric(392), cur("jpy"));
  assert_ptr_equal(tp_currency_by_numeric(48), cur("bhd"));
  assert_ptr_equal(tp_currency_by_numeric(978), cur("eur"));
  assert_null(tp_currency_by_numeric(999)); /* XXX */
  assert_null(tp_currency_by_numeric(0));
  assert_null(tp_currency_by_numeric(1000));
}

static void test_table_is_sorted_unique_and_complete(void **state)
{
  (void)state;
  unsigned n = tp_currency_count();
  assert_true(n >= 150);
  assert_null(tp_currency_at(n));
  for (unsigned i = 0; i < n; i++) {
    const struct tp_currency *c = tp_currency_at(i);
    assert_non_null(c);
    assert_int_equal(strlen(c->code), 3);
    for (int k = 0; k < 3; k++)
      assert_true(c->code[k] >= 'a' && c->code[k] <= 'z');
    assert_true(c->numeric > 0 && c->numeric < 1000);
    assert_true(c->exponent <= 4);
    /* Every entry must be reachable through the bsearch. */
    assert_ptr_equal(tp_currency_find(c->code), c);
    if (i > 0 && strcmp(tp_currency_at(i - 1)->code, c->code) >= 0)
      fail_msg("table not sorted/unique at %s", c->code);
    /* Numeric codes are unique except ANG/XCG during the guilder changeover. */
    for (unsigned j = 0; j < i; j++) {
      const struct tp_currency *o = tp_currency_at(j);
      if (o->numeric == c->numeric &&
          !(c->numeric == 532 && strcmp(o->code, "ang") == 0 && strcmp(c->code, "xcg") == 0))
        fail_msg("numeric %u shared by %s and %s", c->numeric, o->code, c->code);
    }
  }
}

static void test_min_charge(void **state)
{
  (void)state;
  assert_int_equal(tp_currency_min_charge(cur("usd")), 50);
  assert_int_equal(tp_currency_min_charge(cur("eur")), 50);
  assert_int_equal(tp_currency_min_charge(cur("gbp")), 30);
  assert_int_equal(tp_currency_min_charge(cur("jpy")), 50);
  assert_int_equal(tp_currency_min_charge(cur("kwd")), 500);
  assert_int_equal(tp_currency_min_charge(cur("bhd")), 500);
  assert_int_equal(tp_currency_min_charge(cur("clf")), 5000);
  /* Every currency has a positive minimum within the amount limit. */
  for (unsigned i = 0; i < tp_currency_count(); i++) {
    int64_t m = tp_currency_min_charge(tp_currency_at(i));
    assert_true(m >= 1 && m <= TP_AMOUNT_MAX);
  }
}

static void test_amount_check_limits(void **state)
{
  (void)state;
  const struct tp_currency *usd = cur("usd");
  assert_int_equal(tp_amount_check(1, usd), 0);
  assert_int_equal(tp_amount_check(TP_AMOUNT_MAX, usd), 0);
  assert_int_equal(tp_amount_check(TP_AMOUNT_MAX + 1, usd), -1);
  assert_int_equal(tp_amount_check(0, usd), -1);
  assert_int_equal(tp_amount_check(-5, usd), -1);
  assert_int_equal(tp_amount_check(INT64_MAX, usd), -1);
  assert_int_equal(tp_amount_check(100, NULL), -1);
}

static void assert_format(int64_t amount, const char *code, const char *want)
{
  char buf[64];
  int n = tp_amount_format(buf, sizeof buf, amount, cur(code));
  if (strcmp(buf, want) != 0 || n != (int)strlen(want))
    fail_msg("format %lld %s: got '%s' (%d), want '%s'", (long long)amount, code, buf, n, want);
  int64_t back = 0;
  if (tp_amount_parse(buf, cur(code), &back) != 0 || back != amount)
    fail_msg("parse '%s' %s: got %lld, want %lld", buf, code, (long long)back, (long long)amount);
}

static void test_format_parse_round_trip(void **state)
{
  (void)state;
  assert_format(1234, "usd", "12.34");
  assert_format(5, "usd", "0.05");
  assert_format(0, "usd", "0.00");
  assert_format(-5, "usd", "-0.05");
  assert_format(-123456, "eur", "-1234.56");
  assert_format(1234, "jpy", "1234");
  assert_format(0, "jpy", "0");
  assert_format(-7, "jpy", "-7");
  assert_format(1234, "kwd", "1.234");
  assert_format(5, "kwd", "0.005");
  assert_format(-1001, "bhd", "-1.001");
  assert_format(12345, "clf", "1.2345");
  assert_format(TP_AMOUNT_MAX, "usd", "999999.99");
  assert_format(INT64_MAX, "usd", "92233720368547758.07");
}

static void test_format_handles_int64_min_and_truncation(void **state)
{
  (void)state;
  char buf[64];
  int n = tp_amount_format(buf, sizeof buf, INT64_MIN, cur("usd"));
  assert_string_equal(buf, "-92233720368547758.08");
  assert_int_equal(n, 21);
  char small[5];
  n = tp_amount_format(small, sizeof small, 123456, cur("usd"));
  assert_int_equal(n, 7); /* "1234.56" would need 7 bytes */
  assert_string_equal(small, "1234");
  assert_int_equal(tp_amount_format(NULL, 0, 1, cur("usd")), 4);
}

static void test_display_puts_the_sign_first_or_the_code_after(void **state)
{
  (void)state;
  char buf[64];
  assert_int_equal(tp_amount_display(buf, sizeof buf, 2000, cur("usd")), 6);
  assert_string_equal(buf, "$20.00");
  tp_amount_display(buf, sizeof buf, 50, cur("eur"));
  assert_string_equal(buf, "\xe2\x82\xac" "0.50");
  tp_amount_display(buf, sizeof buf, 500, cur("jpy"));
  assert_string_equal(buf, "\xc2\xa5" "500");
  tp_amount_display(buf, sizeof buf, 1230, cur("kwd"));
  assert_string_equal(buf, "1.230 kwd");
  tp_amount_display(buf, sizeof buf, 1999, cur("chf"));
  assert_string_equal(buf, "19.99 chf");
  /* a minus goes before the sign, as Stripe writes it */
  tp_amount_display(buf, sizeof buf, -500, cur("usd"));
  assert_string_equal(buf, "-$5.00");
  tp_amount_display(buf, sizeof buf, -500, cur("chf"));
  assert_string_equal(buf, "-5.00 chf");
  assert_string_equal(tp_currency_symbol(cur("gbp")), "\xc2\xa3");
  assert_string_equal(tp_currency_symbol(cur("sek")), "");
  assert_string_equal(tp_currency_symbol(NULL), "");
  /* truncated like snprintf, always terminated */
  char small[4];
  assert_int_equal(tp_amount_display(small, sizeof small, 123456, cur("usd")), 8);
  assert_string_equal(small, "$12");
}

static void test_parse_accepts_fewer_decimals(void **state)
{
  (void)state;
  int64_t v = 0;
  assert_int_equal(tp_amount_parse("12", cur("usd"), &v), 0);
  assert_int_equal(v, 1200);
  assert_int_equal(tp_amount_parse("12.3", cur("usd"), &v), 0);
  assert_int_equal(v, 1230);
  assert_int_equal(tp_amount_parse("007.5", cur("kwd"), &v), 0);
  assert_int_equal(v, 7500);
  assert_int_equal(tp_amount_parse("-0.1", cur("usd"), &v), 0);
  assert_int_equal(v, -10);
}

static void test_parse_rejects_bad_input(void **state)
{
  (void)state;
  int64_t v = 42;
  const char *bad_usd[] = {"1.234", "1e5", "", "-", ".5", "5.", "1..2", "1.2.3", " 1",
                           "1 ", "+1", "--1", "1,00", "0x10", "12a", "1.-2"};
  for (size_t i = 0; i < sizeof bad_usd / sizeof bad_usd[0]; i++)
    if (tp_amount_parse(bad_usd[i], cur("usd"), &v) != -1)
      fail_msg("'%s' should not parse as usd", bad_usd[i]);
  assert_int_equal(v, 42); /* untouched on failure */
  assert_int_equal(tp_amount_parse("1.0", cur("jpy"), &v), -1);
  assert_int_equal(tp_amount_parse("1.2345", cur("kwd"), &v), -1);
  assert_int_equal(tp_amount_parse(NULL, cur("usd"), &v), -1);
  assert_int_equal(tp_amount_parse("1", NULL, &v), -1);
}

static void test_parse_detects_overflow(void **state)
{
  (void)state;
  int64_t v = 0;
  assert_int_equal(tp_amount_parse("9223372036854775807", cur("jpy"), &v), 0);
  assert_int_equal(v, INT64_MAX);
  assert_int_equal(tp_amount_parse("9223372036854775808", cur("jpy"), &v), -1);
  /* Fits as major units but not once scaled to cents. */
  assert_int_equal(tp_amount_parse("92233720368547758.07", cur("usd"), &v), 0);
  assert_int_equal(v, INT64_MAX);
  assert_int_equal(tp_amount_parse("92233720368547758.08", cur("usd"), &v), -1);
  assert_int_equal(tp_amount_parse("92233720368547759", cur("usd"), &v), -1);
  assert_int_equal(tp_amount_parse("99999999999999999999999", cur("usd"), &v), -1);
}

static int64_t md(int64_t a, int64_t n, int64_t d)
{
  int64_t out = 0;
  if (tp_amount_muldiv(a, n, d, &out) != 0)
    fail_msg("muldiv %lld*%lld/%lld failed", (long long)a, (long long)n, (long long)d);
  return out;
}

static void test_three_decimal_card_amounts_end_in_zero(void **state)
{
  (void)state;
  unsigned three = 0;
  for (unsigned i = 0; i < tp_currency_count(); i++) {
    const struct tp_currency *c = tp_currency_at(i);
    for (int64_t a = 1; a <= 40; a++)
      assert_int_equal(tp_amount_card_check(a, c), c->exponent == 3 && a % 10 != 0 ? -1 : 0);
    if (c->exponent == 3)
      three++;
  }
  /* BHD, IQD, JOD, KWD, LYD, OMR, TND: Stripe names five of them */
  assert_true(three >= 5);
  assert_int_equal(tp_amount_card_check(1005, tp_currency_find("kwd")), -1);
  assert_int_equal(tp_amount_card_check(1000, tp_currency_find("KWD")), 0);
  assert_int_equal(tp_amount_card_check(1005, tp_currency_find("usd")), 0);
  assert_int_equal(tp_amount_card_check(1005, NULL), 0);
}

static void test_muldiv_rounds_half_to_even(void **state)
{
  (void)state;
  assert_int_equal(md(5, 1, 2), 2);     /* 2.5 -> 2 */
  assert_int_equal(md(15, 1, 2), 8);    /* 7.5 -> 8 */
  assert_int_equal(md(25, 1, 10), 2);   /* 2.5 -> 2 */
  assert_int_equal(md(35, 1, 10), 4);   /* 3.5 -> 4 */
  assert_int_equal(md(-25, 1, 10), -2); /* -2.5 -> -2 */
  assert_int_equal(md(-35, 1, 10), -4); /* -3.5 -> -4 */
  assert_int_equal(md(25, -1, 10), -2);
  assert_int_equal(md(25, 1, -10), -2);
  assert_int_equal(md(-25, 1, -10), 2);
  assert_int_equal(md(26, 1, 10), 3);   /* 2.6 -> 3 */
  assert_int_equal(md(24, 1, 10), 2);   /* 2.4 -> 2 */
  assert_int_equal(md(-26, 1, 10), -3);
  assert_int_equal(md(-24, 1, 10), -2);
  assert_int_equal(md(10000, 29, 1000), 290); /* 2.9% fee */
  assert_int_equal(md(1234, 29, 1000), 36);   /* 35.786 -> 36 */
  assert_int_equal(md(0, 7, 3), 0);
  assert_int_equal(md(7, 3, 1), 21);
}

static void test_muldiv_is_exact_beyond_64_bits(void **state)
{
  (void)state;
  /* The product overflows int64 but the quotient does not. */
  assert_int_equal(md(INT64_MAX, 1000000, 1000000), INT64_MAX);
  assert_int_equal(md(INT64_MIN, 3, 3), INT64_MIN);
  assert_int_equal(md(4000000000000000000LL, 3, 4), 3000000000000000000LL);
}

static void test_muldiv_detects_overflow_and_zero_den(void **state)
{
  (void)state;
  int64_t out = 99;
  assert_int_equal(tp_amount_muldiv(INT64_MAX, 2, 1, &out), -1);
  assert_int_equal(tp_amount_muldiv(INT64_MIN, -1, 1, &out), -1);
  assert_int_equal(tp_amount_muldiv(INT64_MAX, INT64_MAX, 1, &out), -1);
  assert_int_equal(tp_amount_muldiv(1, 1, 0, &out), -1);
  assert_int_equal(out, 99);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_find_is_case_insensitive),
    cmocka_unit_test(test_find_rejects_malformed_and_unknown_codes),
    cmocka_unit_test(test_exponents),
    cmocka_unit_test(test_by_numeric),
    cmocka_unit_test(test_table_is_sorted_unique_and_complete),
    cmocka_unit_test(test_min_charge),
    cmocka_unit_test(test_amount_check_limits),
    cmocka_unit_test(test_format_parse_round_trip),
    cmocka_unit_test(test_format_handles_int64_min_and_truncation),
    cmocka_unit_test(test_parse_accepts_fewer_decimals),
    cmocka_unit_test(test_parse_rejects_bad_input),
    cmocka_unit_test(test_parse_detects_overflow),
    cmocka_unit_test(test_display_puts_the_sign_first_or_the_code_after),
    cmocka_unit_test(test_three_decimal_card_amounts_end_in_zero),
    cmocka_unit_test(test_muldiv_rounds_half_to_even),
    cmocka_unit_test(test_muldiv_is_exact_beyond_64_bits),
    cmocka_unit_test(test_muldiv_detects_overflow_and_zero_den),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

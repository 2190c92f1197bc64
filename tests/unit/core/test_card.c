/* Card validation: Luhn, brand by BIN, lengths, CVC, expiry, and the fields
 * filled for Stripe's test numbers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "core/card.h"

/* 2025-06-15 12:00:00 UTC: expiry tests must not depend on the real clock. */
#define NOW ((time_t)1749988800)
/* 2025-06-01 00:00:00 UTC, first second of the current month. */
#define MONTH_START ((time_t)1748736000)

/* An independent Luhn so the test numbers are checked, not assumed. */
static bool ref_luhn(const char *s)
{
  size_t n = strlen(s);
  unsigned sum = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned d = (unsigned)(s[n - 1 - i] - '0');
    if (i % 2 == 1)
      d = d * 2 > 9 ? d * 2 - 9 : d * 2;
    sum += d;
  }
  return sum % 10 == 0;
}

static enum tp_card_check check(const char *number, int m, int y, const char *cvc,
                                struct tp_card_info *info, const char **param)
{
  struct tp_card_input in = {.number = number, .exp_month = m, .exp_year = y, .cvc = cvc};
  return tp_card_validate(&in, NOW, info, param);
}

static const struct {
  const char *pan;
  enum tp_brand brand;
  const char *funding;
  const char *country;
} stripe_cards[] = {
  {"4242424242424242", TP_BRAND_VISA, "credit", "US"},
  {"4000056655665556", TP_BRAND_VISA, "debit", "US"},
  {"5555555555554444", TP_BRAND_MASTERCARD, "credit", "US"},
  {"2223003122003222", TP_BRAND_MASTERCARD, "credit", "US"},
  {"5200828282828210", TP_BRAND_MASTERCARD, "debit", "US"},
  {"5105105105105100", TP_BRAND_MASTERCARD, "prepaid", "US"},
  {"378282246310005", TP_BRAND_AMEX, "credit", "US"},
  {"371449635398431", TP_BRAND_AMEX, "credit", "US"},
  {"6011111111111117", TP_BRAND_DISCOVER, "credit", "US"},
  {"6011000990139424", TP_BRAND_DISCOVER, "credit", "US"},
  {"6011981111111113", TP_BRAND_DISCOVER, "debit", "US"},
  {"3056930009020004", TP_BRAND_DINERS, "credit", "US"},
  {"36227206271667", TP_BRAND_DINERS, "credit", "US"},
  {"3566002020360505", TP_BRAND_JCB, "credit", "US"},
  {"6200000000000005", TP_BRAND_UNIONPAY, "credit", "US"},
  {"6200000000000047", TP_BRAND_UNIONPAY, "debit", "US"},
  {"6205500000000000004", TP_BRAND_UNIONPAY, "credit", "US"},
  {"6759649826438453", TP_BRAND_MAESTRO, "credit", "US"},
  /* Decline and 3DS test numbers: valid cards that processors refuse. */
  {"4000000000000002", TP_BRAND_VISA, "credit", "US"},
  {"4000000000009995", TP_BRAND_VISA, "credit", "US"},
  {"4000000000009987", TP_BRAND_VISA, "credit", "US"},
  {"4000000000009979", TP_BRAND_VISA, "credit", "US"},
  {"4000000000000069", TP_BRAND_VISA, "credit", "US"},
  {"4000000000000127", TP_BRAND_VISA, "credit", "US"},
  {"4000000000000119", TP_BRAND_VISA, "credit", "US"},
  {"4100000000000019", TP_BRAND_VISA, "credit", "US"},
  {"4000002760003184", TP_BRAND_VISA, "credit", "DE"},
  {"4000000000003220", TP_BRAND_VISA, "credit", "US"},
  {"4000000760000002", TP_BRAND_VISA, "credit", "BR"},
  {"4000001240000000", TP_BRAND_VISA, "credit", "CA"},
  {"4000004840008001", TP_BRAND_VISA, "credit", "MX"},
  {"4000008260000000", TP_BRAND_VISA, "credit", "GB"},
  {"4000006160000005", TP_BRAND_VISA, "credit", "PL"},
  {"4000005540000008", TP_BRAND_VISA, "credit", "NZ"},
  {"4000006000000066", TP_BRAND_VISA, "credit", "PY"},
  {"5555558265554449", TP_BRAND_MASTERCARD, "credit", "GB"},
  {"5200007840000022", TP_BRAND_MASTERCARD, "credit", "AE"},
  {"3530111333300000", TP_BRAND_JCB, "credit", "JP"},
  {"4000057640000008", TP_BRAND_VISA, "debit", "TH"},
  {"4000050360000001", TP_BRAND_VISA, "debit", "AU"},
  {"4000002500001001", TP_BRAND_VISA, "credit", "FR"},
};

static void test_stripe_test_numbers_validate(void **state)
{
  (void)state;
  for (size_t i = 0; i < sizeof stripe_cards / sizeof stripe_cards[0]; i++) {
    const char *pan = stripe_cards[i].pan;
    size_t len = strlen(pan);
    if (!ref_luhn(pan))
      fail_msg("%s fails the reference Luhn", pan);
    assert_true(tp_luhn_ok(pan, len));
    struct tp_card_info info;
    const char *param = "x";
    const char *cvc = stripe_cards[i].brand == TP_BRAND_AMEX ? "1234" : "123";
    enum tp_card_check r = check(pan, 12, 2030, cvc, &info, &param);
    if (r != TP_CARD_OK)
      fail_msg("%s: check %d param %s", pan, (int)r, param ? param : "(null)");
    assert_null(param);
    if (info.brand != stripe_cards[i].brand)
      fail_msg("%s: brand %s, want %s", pan, tp_brand_name(info.brand),
               tp_brand_name(stripe_cards[i].brand));
    assert_string_equal(info.pan, pan);
    assert_int_equal(info.pan_len, len);
    assert_string_equal(info.last4, pan + len - 4);
    size_t binlen = len >= 16 ? 8 : 6;
    assert_int_equal(strlen(info.bin), binlen);
    assert_memory_equal(info.bin, pan, binlen);
    assert_string_equal(info.funding, stripe_cards[i].funding);
    assert_string_equal(info.country, stripe_cards[i].country);
    assert_int_equal(info.exp_month, 12);
    assert_int_equal(info.exp_year, 2030);
  }
}

static void test_brand_ranges(void **state)
{
  (void)state;
  struct {
    const char *prefix;
    enum tp_brand brand;
  } want[] = {
    {"411111", TP_BRAND_VISA},        {"510000", TP_BRAND_MASTERCARD},
    {"559999", TP_BRAND_MASTERCARD},  {"222100", TP_BRAND_MASTERCARD},
    {"272099", TP_BRAND_MASTERCARD},  {"222099", TP_BRAND_UNKNOWN},
    {"272100", TP_BRAND_UNKNOWN},     {"340000", TP_BRAND_AMEX},
    {"370000", TP_BRAND_AMEX},        {"350000", TP_BRAND_UNKNOWN},
    {"352800", TP_BRAND_JCB},         {"358999", TP_BRAND_JCB},
    {"359000", TP_BRAND_UNKNOWN},     {"300000", TP_BRAND_DINERS},
    {"305999", TP_BRAND_DINERS},      {"306000", TP_BRAND_UNKNOWN},
    {"360000", TP_BRAND_DINERS},      {"380000", TP_BRAND_DINERS},
    {"390000", TP_BRAND_DINERS},      {"601100", TP_BRAND_DISCOVER},
    {"644000", TP_BRAND_DISCOVER},    {"649999", TP_BRAND_DISCOVER},
    {"650000", TP_BRAND_DISCOVER},    {"622126", TP_BRAND_DISCOVER},
    {"622925", TP_BRAND_DISCOVER},    {"622125", TP_BRAND_UNIONPAY},
    {"622926", TP_BRAND_UNIONPAY},    {"620000", TP_BRAND_UNIONPAY},
    {"810000", TP_BRAND_UNIONPAY},    {"500000", TP_BRAND_MAESTRO},
    {"560000", TP_BRAND_MAESTRO},     {"580000", TP_BRAND_MAESTRO},
    {"630400", TP_BRAND_MAESTRO},     {"675900", TP_BRAND_MAESTRO},
    {"676100", TP_BRAND_MAESTRO},     {"676770", TP_BRAND_MAESTRO},
    {"601200", TP_BRAND_MAESTRO},     {"643000", TP_BRAND_MAESTRO},
    {"100000", TP_BRAND_UNKNOWN},     {"700000", TP_BRAND_UNKNOWN},
    {"900000", TP_BRAND_UNKNOWN},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    enum tp_brand b = tp_card_brand(want[i].prefix, 6);
    if (b != want[i].brand)
      fail_msg("%s: brand %s want %s", want[i].prefix, tp_brand_name(b),
               tp_brand_name(want[i].brand));
  }
  assert_int_equal(tp_card_brand("", 0), TP_BRAND_UNKNOWN);
  assert_int_equal(tp_card_brand(NULL, 6), TP_BRAND_UNKNOWN);
}

static void test_brand_names_round_trip(void **state)
{
  (void)state;
  for (unsigned b = 0; b < TP_BRAND__COUNT; b++)
    assert_int_equal(tp_brand_from_name(tp_brand_name((enum tp_brand)b)), b);
  assert_string_equal(tp_brand_name(TP_BRAND_AMEX), "amex");
  assert_string_equal(tp_brand_name(TP_BRAND_DINERS), "diners");
  assert_string_equal(tp_brand_name(TP_BRAND__COUNT), "unknown");
  assert_int_equal(tp_brand_from_name("Visa"), TP_BRAND_VISA);
  assert_int_equal(tp_brand_from_name("bogus"), TP_BRAND_UNKNOWN);
  assert_int_equal(tp_brand_from_name(NULL), TP_BRAND_UNKNOWN);
}

static void test_luhn(void **state)
{
  (void)state;
  assert_true(tp_luhn_ok("79927398713", 11));
  assert_false(tp_luhn_ok("79927398710", 11));
  assert_false(tp_luhn_ok("4242424242424241", 16));
  assert_false(tp_luhn_ok("42424242a4242424", 16));
  assert_false(tp_luhn_ok("", 0));
  /* Every single-digit change of a valid number must be caught. */
  char pan[] = "4242424242424242";
  for (size_t i = 0; i < 16; i++) {
    char orig = pan[i];
    for (char d = '0'; d <= '9'; d++) {
      if (d == orig)
        continue;
      pan[i] = d;
      assert_false(tp_luhn_ok(pan, 16));
    }
    pan[i] = orig;
  }
}

static void assert_number_is(const char *number, enum tp_card_check want)
{
  struct tp_card_info info;
  const char *param = NULL;
  enum tp_card_check r = check(number, 12, 2030, NULL, &info, &param);
  if (r != want)
    fail_msg("'%s' gave %d, want %d", number ? number : "(null)", (int)r, (int)want);
  assert_non_null(param);
  assert_string_equal(param, "number");
}

static void assert_bad_number(const char *number)
{
  assert_number_is(number, TP_CARD_INCORRECT_NUMBER);
}

static void test_incorrect_numbers(void **state)
{
  (void)state;
  assert_bad_number("4242424242424241");      /* Luhn */
  /* not a card number at all: invalid_number (Stripe's, for "-1") */
  assert_number_is("4242 4242 4242 424x", TP_CARD_INVALID_NUMBER); /* bad char */
  assert_number_is("4242.4242.4242.4242", TP_CARD_INVALID_NUMBER);
  assert_number_is("4242424242424242\n", TP_CARD_INVALID_NUMBER);
  assert_number_is("-1", TP_CARD_INVALID_NUMBER);
  assert_number_is("", TP_CARD_INVALID_NUMBER);
  assert_number_is(NULL, TP_CARD_INVALID_NUMBER);
  assert_number_is("42424242420", TP_CARD_INVALID_NUMBER);          /* 11 digits */
  assert_number_is("42424242424242424242", TP_CARD_INVALID_NUMBER); /* 20 digits */
  assert_bad_number("1000000000000008");      /* Luhn ok, no brand */
  assert_bad_number("9000000000000001");
  assert_true(ref_luhn("1000000000000008") && ref_luhn("9000000000000001"));
}

static void test_wrong_length_for_brand(void **state)
{
  (void)state;
  /* Each number passes Luhn, so only the length can be the reason. */
  const char *wrong[] = {
    "42424242424242",      /* visa 14 */
    "424242424242424",     /* visa 15 */
    "55555555555544",      /* mastercard 14 */
    "55555555555544446",   /* mastercard 17 */
    "3782822463100",       /* amex 13 */
    "3782822463100052",    /* amex 16 */
    "601111111111111",     /* discover 15 */
    "3622720627166",       /* diners 13 */
    "356600202036050",     /* jcb 15 */
  };
  for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
    char pan[24];
    size_t n = strlen(wrong[i]);
    memcpy(pan, wrong[i], n + 1);
    /* Fix the last digit so the Luhn sum is right. */
    for (char d = '0'; d <= '9'; d++) {
      pan[n - 1] = d;
      if (ref_luhn(pan))
        break;
    }
    assert_true(ref_luhn(pan));
    assert_false(tp_card_length_ok(tp_card_brand(pan, n), n));
    assert_bad_number(pan);
  }
  assert_true(tp_card_length_ok(TP_BRAND_VISA, 13));
  assert_true(tp_card_length_ok(TP_BRAND_VISA, 19));
  assert_true(tp_card_length_ok(TP_BRAND_MAESTRO, 12));
  assert_false(tp_card_length_ok(TP_BRAND_UNKNOWN, 16));
}

static void test_spaces_and_dashes_are_stripped(void **state)
{
  (void)state;
  struct tp_card_info info;
  const char *param = NULL;
  assert_int_equal(check("4242 4242 4242 4242", 1, 2030, "123", &info, &param), TP_CARD_OK);
  assert_string_equal(info.pan, "4242424242424242");
  assert_int_equal(info.pan_len, 16);
  assert_int_equal(check("3782-822463-10005", 1, 2030, "1234", &info, &param), TP_CARD_OK);
  assert_string_equal(info.pan, "378282246310005");
  assert_string_equal(info.last4, "0005");
  assert_string_equal(info.bin, "378282");
  assert_int_equal(info.brand, TP_BRAND_AMEX);
  assert_int_equal(check(" 4000-0566 5566-5556 ", 1, 2030, NULL, &info, &param), TP_CARD_OK);
  assert_string_equal(info.funding, "debit");
  assert_string_equal(info.bin, "40000566");
}

static void test_cvc_length_by_brand(void **state)
{
  (void)state;
  struct tp_card_info info;
  const char *param = NULL;
  assert_int_equal(tp_card_cvc_len(TP_BRAND_AMEX), 4);
  assert_int_equal(tp_card_cvc_len(TP_BRAND_VISA), 3);
  assert_int_equal(check("378282246310005", 1, 2030, "1234", &info, &param), TP_CARD_OK);
  assert_int_equal(check("378282246310005", 1, 2030, "123", &info, &param), TP_CARD_INVALID_CVC);
  assert_string_equal(param, "cvc");
  assert_int_equal(check("4242424242424242", 1, 2030, "123", &info, &param), TP_CARD_OK);
  assert_int_equal(check("4242424242424242", 1, 2030, "1234", &info, &param), TP_CARD_INVALID_CVC);
  assert_int_equal(check("4242424242424242", 1, 2030, "12", &info, &param), TP_CARD_INVALID_CVC);
  assert_int_equal(check("4242424242424242", 1, 2030, "12a", &info, &param), TP_CARD_INVALID_CVC);
  assert_int_equal(check("4242424242424242", 1, 2030, "", &info, &param), TP_CARD_INVALID_CVC);
  assert_string_equal(param, "cvc");
  assert_int_equal(check("4242424242424242", 1, 2030, NULL, &info, &param), TP_CARD_OK);
}

static void test_expiry_month_range(void **state)
{
  (void)state;
  struct tp_card_info info;
  const char *param = NULL;
  assert_int_equal(check("4242424242424242", 0, 2030, NULL, &info, &param),
                   TP_CARD_INVALID_EXPIRY_MONTH);
  assert_string_equal(param, "exp_month");
  assert_int_equal(check("4242424242424242", 13, 2030, NULL, &info, &param),
                   TP_CARD_INVALID_EXPIRY_MONTH);
  assert_int_equal(check("4242424242424242", -1, 2030, NULL, &info, &param),
                   TP_CARD_INVALID_EXPIRY_MONTH);
  assert_int_equal(check("4242424242424242", 1, 2030, NULL, &info, &param), TP_CARD_OK);
  assert_int_equal(check("4242424242424242", 12, 2030, NULL, &info, &param), TP_CARD_OK);
}

static void test_expiry_year_range(void **state)
{
  (void)state;
  struct tp_card_info info;
  const char *param = NULL;
  assert_int_equal(check("4242424242424242", 6, 2075, NULL, &info, &param), TP_CARD_OK);
  assert_int_equal(check("4242424242424242", 6, 2076, NULL, &info, &param),
                   TP_CARD_INVALID_EXPIRY_YEAR);
  assert_string_equal(param, "exp_year");
  assert_int_equal(check("4242424242424242", 6, 1969, NULL, &info, &param),
                   TP_CARD_INVALID_EXPIRY_YEAR);
  assert_int_equal(check("4242424242424242", 6, 100, NULL, &info, &param),
                   TP_CARD_INVALID_EXPIRY_YEAR);
  assert_int_equal(check("4242424242424242", 6, -5, NULL, &info, &param),
                   TP_CARD_INVALID_EXPIRY_YEAR);
  /* A plausible past year is expired (the API answers invalid_expiry_year,
   * naming exp_year; a saved card that expired still loads). */
  assert_int_equal(check("4242424242424242", 6, 2020, NULL, &info, &param), TP_CARD_EXPIRED);
  assert_string_equal(param, "exp_year");
}

static void test_two_digit_year(void **state)
{
  (void)state;
  struct tp_card_info info;
  const char *param = NULL;
  assert_int_equal(check("4242424242424242", 3, 30, NULL, &info, &param), TP_CARD_OK);
  assert_int_equal(info.exp_year, 2030);
  assert_int_equal(info.exp_month, 3);
  assert_int_equal(check("4242424242424242", 3, 24, NULL, &info, &param), TP_CARD_EXPIRED);
  assert_int_equal(info.exp_year, 2024);
}

static void test_expiry_is_by_utc_month(void **state)
{
  (void)state;
  struct tp_card_info info;
  const char *param = NULL;
  struct tp_card_input in = {.number = "4242424242424242", .exp_month = 6, .exp_year = 2025};
  /* The current month is still good, from its first second to its last. */
  assert_int_equal(tp_card_validate(&in, NOW, &info, &param), TP_CARD_OK);
  assert_int_equal(tp_card_validate(&in, MONTH_START, &info, &param), TP_CARD_OK);
  in.exp_month = 5;
  assert_int_equal(tp_card_validate(&in, NOW, &info, &param), TP_CARD_EXPIRED);
  assert_string_equal(param, "exp_month");
  /* One second before June, May is the current month again. */
  assert_int_equal(tp_card_validate(&in, MONTH_START - 1, &info, &param), TP_CARD_OK);
  in.exp_month = 7;
  assert_int_equal(tp_card_validate(&in, NOW, &info, &param), TP_CARD_OK);
  in.exp_month = 12;
  in.exp_year = 2024;
  assert_int_equal(tp_card_validate(&in, NOW, &info, &param), TP_CARD_EXPIRED);
}

static void test_number_is_checked_before_expiry_and_cvc(void **state)
{
  (void)state;
  struct tp_card_info info;
  const char *param = NULL;
  assert_int_equal(check("4242424242424241", 13, 1900, "x", &info, &param),
                   TP_CARD_INCORRECT_NUMBER);
  assert_string_equal(param, "number");
  assert_int_equal(check("4242424242424242", 13, 1900, "x", &info, &param),
                   TP_CARD_INVALID_EXPIRY_MONTH);
  assert_int_equal(check("4242424242424242", 1, 1900, "x", &info, &param),
                   TP_CARD_INVALID_EXPIRY_YEAR);
  assert_int_equal(check("4242424242424242", 1, 2020, "x", &info, &param), TP_CARD_EXPIRED);
}

static void test_bin_is_six_digits_for_short_pans(void **state)
{
  (void)state;
  struct tp_card_info info;
  const char *param = NULL;
  assert_int_equal(check("36227206271667", 1, 2030, "123", &info, &param), TP_CARD_OK);
  assert_string_equal(info.bin, "362272");
  assert_string_equal(info.last4, "1667");
  assert_int_equal(check("6205500000000000004", 1, 2030, "123", &info, &param), TP_CARD_OK);
  assert_string_equal(info.bin, "62055000");
  assert_string_equal(info.last4, "0004");
  assert_int_equal(info.pan_len, 19);
}

static void test_wipe_clears_buffer(void **state)
{
  (void)state;
  struct tp_card_info info;
  const char *param = NULL;
  assert_int_equal(check("4242424242424242", 1, 2030, "123", &info, &param), TP_CARD_OK);
  tp_card_wipe(info.pan, sizeof info.pan);
  for (size_t i = 0; i < sizeof info.pan; i++)
    assert_int_equal(info.pan[i], 0);
  tp_card_wipe(NULL, 0);
}

static void test_calculated_descriptor(void **state)
{
  (void)state;
  char d[TP_DESCRIPTOR_MAX + 1];
  tp_calculated_descriptor(d, NULL, NULL, "Acme Coffee Roasters");
  assert_string_equal(d, "ACME COFFEE ROASTERS");
  tp_calculated_descriptor(d, "", NULL, "  The <Very> \"Long\" Merchant Name, Inc.*");
  assert_string_equal(d, "THE VERY LONG MERCHANT"); /* signs dropped, 22 characters, no trailing space */
  tp_calculated_descriptor(d, "shop.example", NULL, "Acme");
  assert_string_equal(d, "SHOP.EXAMPLE");
  tp_calculated_descriptor(d, NULL, "order 42", "Acme Coffee Roasters");
  assert_string_equal(d, "ACME COFFE* ORDER 42"); /* prefix cut to 10 */
  tp_calculated_descriptor(d, NULL, "a suffix far too long to fit", "Acme");
  assert_string_equal(d, "ACME* A SUFFIX FAR TOO");
  assert_int_equal(strlen(d), TP_DESCRIPTOR_MAX);
  tp_calculated_descriptor(d, NULL, NULL, "\xc3\xa9t\xc3\xa9 caf\xc3\xa9");
  assert_string_equal(d, "T CAF"); /* non-ASCII left out */
  tp_calculated_descriptor(d, NULL, NULL, NULL);
  assert_string_equal(d, "");
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_stripe_test_numbers_validate),
    cmocka_unit_test(test_brand_ranges),
    cmocka_unit_test(test_brand_names_round_trip),
    cmocka_unit_test(test_luhn),
    cmocka_unit_test(test_incorrect_numbers),
    cmocka_unit_test(test_wrong_length_for_brand),
    cmocka_unit_test(test_spaces_and_dashes_are_stripped),
    cmocka_unit_test(test_cvc_length_by_brand),
    cmocka_unit_test(test_expiry_month_range),
    cmocka_unit_test(test_expiry_year_range),
    cmocka_unit_test(test_two_digit_year),
    cmocka_unit_test(test_expiry_is_by_utc_month),
    cmocka_unit_test(test_number_is_checked_before_expiry_and_cvc),
    cmocka_unit_test(test_bin_is_six_digits_for_short_pans),
    cmocka_unit_test(test_wipe_clears_buffer),
    cmocka_unit_test(test_calculated_descriptor),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

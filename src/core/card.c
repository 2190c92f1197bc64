/* Card number checks done before a card reaches the vault or a processor:
 * Luhn, brand by BIN range, PAN length, CVC shape and expiry. Never logs or
 * copies the PAN anywhere but the caller's struct. */
#include "card.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#define TP_PAN_MIN 12
#define TP_PAN_MAX 19
/* Expiry years further out than this are typos, not cards. */
#define TP_EXP_YEARS_AHEAD 50

static const char *const brand_names[TP_BRAND__COUNT] = {
  [TP_BRAND_UNKNOWN] = "unknown",   [TP_BRAND_VISA] = "visa",
  [TP_BRAND_MASTERCARD] = "mastercard", [TP_BRAND_AMEX] = "amex",
  [TP_BRAND_DISCOVER] = "discover", [TP_BRAND_DINERS] = "diners",
  [TP_BRAND_JCB] = "jcb",           [TP_BRAND_UNIONPAY] = "unionpay",
  [TP_BRAND_MAESTRO] = "maestro",
};

/* Stripe's brand string for b. */
const char *tp_brand_name(enum tp_brand b)
{
  if ((unsigned)b >= TP_BRAND__COUNT)
    return brand_names[TP_BRAND_UNKNOWN];
  return brand_names[b];
}

/* Brand from its Stripe name, case-insensitive; UNKNOWN if none matches. */
enum tp_brand tp_brand_from_name(const char *s)
{
  if (s == NULL)
    return TP_BRAND_UNKNOWN;
  for (unsigned b = 0; b < TP_BRAND__COUNT; b++)
    if (strcasecmp(s, brand_names[b]) == 0)
      return (enum tp_brand)b;
  return TP_BRAND_UNKNOWN;
}

/* Luhn mod-10 over digits only. */
bool tp_luhn_ok(const char *digits, size_t len)
{
  if (digits == NULL || len == 0)
    return false;
  unsigned sum = 0;
  bool dbl = false;
  for (size_t i = len; i-- > 0;) {
    if (digits[i] < '0' || digits[i] > '9')
      return false;
    unsigned d = (unsigned)(digits[i] - '0');
    if (dbl) {
      d *= 2;
      if (d > 9)
        d -= 9;
    }
    sum += d;
    dbl = !dbl;
  }
  return sum % 10 == 0;
}

/* Value of the first n digits, or -1 if there are fewer than n digits. */
static long prefix(const char *digits, size_t len, size_t n)
{
  if (len < n)
    return -1;
  long v = 0;
  for (size_t i = 0; i < n; i++) {
    if (digits[i] < '0' || digits[i] > '9')
      return -1;
    v = v * 10 + (digits[i] - '0');
  }
  return v;
}

static bool between(long v, long lo, long hi)
{
  return v >= lo && v <= hi;
}

/* One IIN range: prefixes of `digits` length between lo and hi. The table is
 * ordered most specific first, so a co-branded or carved-out range (Discover
 * inside UnionPay's 62, Maestro inside Discover-free 6x) wins over the broad
 * one that contains it. */
struct iin_range {
  unsigned char digits;
  long lo, hi;
  enum tp_brand brand;
};

static const struct iin_range iin_ranges[] = {
  {6, 622126, 622925, TP_BRAND_DISCOVER},
  {6, 676770, 676770, TP_BRAND_MAESTRO},
  {6, 676774, 676774, TP_BRAND_MAESTRO},
  {4, 6304, 6304, TP_BRAND_MAESTRO},
  {4, 6759, 6759, TP_BRAND_MAESTRO},
  {4, 6761, 6763, TP_BRAND_MAESTRO},
  {4, 6011, 6011, TP_BRAND_DISCOVER},
  {4, 2221, 2720, TP_BRAND_MASTERCARD},
  {4, 3528, 3589, TP_BRAND_JCB},
  {3, 644, 649, TP_BRAND_DISCOVER},
  {3, 300, 305, TP_BRAND_DINERS},
  {2, 65, 65, TP_BRAND_DISCOVER},
  {2, 51, 55, TP_BRAND_MASTERCARD},
  {2, 34, 34, TP_BRAND_AMEX},
  {2, 37, 37, TP_BRAND_AMEX},
  {2, 36, 36, TP_BRAND_DINERS},
  {2, 38, 39, TP_BRAND_DINERS},
  {2, 62, 62, TP_BRAND_UNIONPAY},
  {2, 81, 81, TP_BRAND_UNIONPAY},
  {2, 50, 50, TP_BRAND_MAESTRO},
  {2, 56, 69, TP_BRAND_MAESTRO},
  {1, 4, 4, TP_BRAND_VISA},
};

/* Brand by IIN range of the leading digits; first (most specific) match wins. */
enum tp_brand tp_card_brand(const char *digits, size_t len)
{
  if (digits == NULL)
    return TP_BRAND_UNKNOWN;
  for (size_t i = 0; i < sizeof iin_ranges / sizeof iin_ranges[0]; i++) {
    const struct iin_range *r = &iin_ranges[i];
    if (between(prefix(digits, len, r->digits), r->lo, r->hi))
      return r->brand;
  }
  return TP_BRAND_UNKNOWN;
}

/* Whether len is a PAN length the brand issues. */
bool tp_card_length_ok(enum tp_brand b, size_t len)
{
  switch (b) {
  case TP_BRAND_VISA:
    return len == 13 || len == 16 || len == 19;
  case TP_BRAND_MASTERCARD:
    return len == 16;
  case TP_BRAND_AMEX:
    return len == 15;
  case TP_BRAND_DISCOVER:
  case TP_BRAND_JCB:
  case TP_BRAND_UNIONPAY:
    return len >= 16 && len <= 19;
  case TP_BRAND_DINERS:
    return len >= 14 && len <= 19;
  case TP_BRAND_MAESTRO:
    return len >= 12 && len <= 19;
  case TP_BRAND_UNKNOWN:
  case TP_BRAND__COUNT:
    break;
  }
  return false;
}

/* Expected CVC length: amex prints 4 digits on the front, others 3 on the back. */
unsigned tp_card_cvc_len(enum tp_brand b)
{
  return b == TP_BRAND_AMEX ? 4 : 3;
}

/* Stripe's test PANs whose funding or country is not the default, so the
 * sandbox answers like Stripe does for them. Exact PAN match only. */
static const struct {
  const char *pan;
  const char *funding;
  const char *country;
} test_cards[] = {
  {"4000056655665556", "debit", "US"},
  {"5200828282828210", "debit", "US"},
  {"5105105105105100", "prepaid", "US"},
  {"6011981111111113", "debit", "US"},
  {"4000000000003220", "credit", "US"},
  {"4000008400000027", "credit", "US"},
  {"4000000400000008", "credit", "AT"},
  {"4000000560000004", "credit", "BE"},
  {"4000002080000001", "credit", "DK"},
  {"4000002460000001", "credit", "FI"},
  {"4000002500000003", "credit", "FR"},
  {"4000002760003184", "credit", "DE"},
  {"4000002760000016", "credit", "DE"},
  {"4000003720000005", "credit", "IE"},
  {"4000003800000008", "credit", "IT"},
  {"4000005280000002", "credit", "NL"},
  {"4000005780000007", "credit", "NO"},
  {"4000007240000007", "credit", "ES"},
  {"4000007520000008", "credit", "SE"},
  {"4000007560000009", "credit", "CH"},
  {"4000008260000000", "credit", "GB"},
  {"4000058260000005", "debit", "GB"},
  {"4000000360000006", "credit", "AU"},
  {"4000001240000000", "credit", "CA"},
  {"4000004840008001", "credit", "MX"},
  {"4000000760000002", "credit", "BR"},
  {"4000003920000003", "credit", "JP"},
  {"4000007020000003", "credit", "SG"},
  {"4000003560000008", "credit", "IN"},
  /* the rest of Stripe's international test cards (docs.stripe.com/testing) */
  {"4000000320000021", "credit", "AR"},
  {"4000001520000001", "credit", "CL"},
  {"4000001700000003", "credit", "CO"},
  {"4000001880000005", "credit", "CR"},
  {"4000002180000000", "credit", "EC"},
  {"4000005910000000", "credit", "PA"},
  {"4000006000000066", "credit", "PY"},
  {"4000006040000068", "credit", "PE"},
  {"4000008580000003", "credit", "UY"},
  {"4000007840000001", "credit", "AE"},
  {"5200007840000022", "credit", "AE"},
  {"4000001000000000", "credit", "BG"},
  {"4000001120000005", "credit", "BY"},
  {"4000001910000009", "credit", "HR"},
  {"4000001960000008", "credit", "CY"},
  {"4000002030000002", "credit", "CZ"},
  {"4000002330000009", "credit", "EE"},
  {"4000002920000005", "credit", "GI"},
  {"4000003000000030", "credit", "GR"},
  {"4000003480000005", "credit", "HU"},
  {"4000004280000005", "credit", "LV"},
  {"4000004380000004", "credit", "LI"},
  {"4000004400000000", "credit", "LT"},
  {"4000004420000006", "credit", "LU"},
  {"4000004700000007", "credit", "MT"},
  {"4000006160000005", "credit", "PL"},
  {"4000006200000007", "credit", "PT"},
  {"4000006420000001", "credit", "RO"},
  {"4000006820000007", "credit", "SA"},
  {"4000007050000006", "credit", "SI"},
  {"4000007030000001", "credit", "SK"},
  {"5555558265554449", "credit", "GB"},
  {"4000001560000002", "credit", "CN"},
  {"4000003440000004", "credit", "HK"},
  {"4000004580000002", "credit", "MY"},
  {"4000005540000008", "credit", "NZ"},
  {"4000001580000008", "credit", "TW"},
  {"4000007640000003", "credit", "TH"},
  {"4000057640000008", "debit", "TH"},
  {"3530111333300000", "credit", "JP"},
  {"6200000000000047", "debit", "US"},
  {"4000002500001001", "credit", "FR"},
  {"4000050360000001", "debit", "AU"},
};

static void fill_funding_country(struct tp_card_info *info)
{
  info->funding = "credit";
  info->country = "US";
  for (size_t i = 0; i < sizeof test_cards / sizeof test_cards[0]; i++) {
    if (strcmp(test_cards[i].pan, info->pan) == 0) {
      info->funding = test_cards[i].funding;
      info->country = test_cards[i].country;
      return;
    }
  }
}

/* Copy the digits of `number` into info->pan, skipping spaces and dashes that
 * people type between groups; false on anything else or too many digits. */
static bool normalize_pan(const char *number, struct tp_card_info *info)
{
  unsigned n = 0;
  for (const char *p = number; *p != '\0'; p++) {
    if (*p == ' ' || *p == '-')
      continue;
    if (*p < '0' || *p > '9' || n >= TP_PAN_MAX)
      return false;
    info->pan[n++] = *p;
  }
  info->pan[n] = '\0';
  info->pan_len = n;
  return n >= TP_PAN_MIN;
}

static enum tp_card_check fail(enum tp_card_check code, const char *name, const char **param)
{
  if (param != NULL)
    *param = name;
  return code;
}

/* Validate and normalize a card; see card.h for the rules. */
enum tp_card_check tp_card_validate(const struct tp_card_input *in, time_t now,
                                    struct tp_card_info *info, const char **param)
{
  if (param != NULL)
    *param = NULL;
  memset(info, 0, sizeof *info);
  info->funding = "unknown";
  info->country = "US";
  /* Not a card number at all (Stripe's invalid_number: "-1", "abc", 20
   * digits), apart from one that is not right (incorrect_number: Luhn). */
  if (in == NULL || in->number == NULL)
    return fail(TP_CARD_INVALID_NUMBER, "number", param);

  if (!normalize_pan(in->number, info)) {
    tp_card_wipe(info->pan, sizeof info->pan);
    info->pan_len = 0;
    return fail(TP_CARD_INVALID_NUMBER, "number", param);
  }
  size_t len = info->pan_len;
  info->brand = tp_card_brand(info->pan, len);
  memcpy(info->last4, info->pan + len - 4, 4);
  info->last4[4] = '\0';
  size_t binlen = len >= 16 ? 8 : 6;
  memcpy(info->bin, info->pan, binlen);
  info->bin[binlen] = '\0';
  if (!tp_luhn_ok(info->pan, len) || info->brand == TP_BRAND_UNKNOWN ||
      !tp_card_length_ok(info->brand, len))
    return fail(TP_CARD_INCORRECT_NUMBER, "number", param);
  fill_funding_country(info);

  info->exp_month = in->exp_month;
  if (in->exp_month < 1 || in->exp_month > 12)
    return fail(TP_CARD_INVALID_EXPIRY_MONTH, "exp_month", param);

  struct tm tm;
  if (gmtime_r(&now, &tm) == NULL)
    return fail(TP_CARD_INVALID_EXPIRY_YEAR, "exp_year", param);
  int cur_year = tm.tm_year + 1900;
  int cur_month = tm.tm_mon + 1;
  int year = in->exp_year;
  if (year >= 0 && year < 100)
    year += 2000;
  info->exp_year = year;
  if (year < 1970 || year > cur_year + TP_EXP_YEARS_AHEAD)
    return fail(TP_CARD_INVALID_EXPIRY_YEAR, "exp_year", param);
  /* A card is good through the last day of its expiry month. A date in
   * the past is Stripe's invalid_expiry_year / _month at entry (expired_card
   * is the issuer's decline); TP_CARD_EXPIRED tells a saved card apart. */
  if (year < cur_year)
    return fail(TP_CARD_EXPIRED, "exp_year", param);
  if (year == cur_year && in->exp_month < cur_month)
    return fail(TP_CARD_EXPIRED, "exp_month", param);

  if (in->cvc != NULL) {
    size_t want = tp_card_cvc_len(info->brand);
    size_t got = strlen(in->cvc);
    if (got != want)
      return fail(TP_CARD_INVALID_CVC, "cvc", param);
    for (size_t i = 0; i < got; i++)
      if (in->cvc[i] < '0' || in->cvc[i] > '9')
        return fail(TP_CARD_INVALID_CVC, "cvc", param);
  }
  return TP_CARD_OK;
}

/* Wipe card data; explicit_bzero is a call the optimizer must keep. */
void tp_card_wipe(void *p, size_t n)
{
  if (p != NULL && n > 0)
    explicit_bzero(p, n);
}

void tp_calculated_descriptor(char out[TP_DESCRIPTOR_MAX + 1], const char *descriptor, const char *suffix,
                              const char *merchant_name)
{
  /* Card networks show letters, digits and a few signs, upper case; Stripe
   * leaves out < > \ ' " * and shortens the prefix to fit a suffix. */
  const char *src = descriptor && *descriptor ? descriptor : merchant_name ? merchant_name : "";
  char prefix[TP_DESCRIPTOR_MAX + 1];
  size_t n = 0;
  for (const char *c = src; *c && n < TP_DESCRIPTOR_MAX; c++) {
    unsigned char ch = (unsigned char)*c;
    if (ch < 0x20 || ch > 0x7e || strchr("<>\\'\"*", ch))
      continue;
    if (n == 0 && ch == ' ')
      continue;
    prefix[n++] = (char)toupper(ch);
  }
  while (n > 0 && prefix[n - 1] == ' ')
    n--;
  prefix[n] = '\0';
  if (suffix && *suffix) {
    size_t keep = n < 10 ? n : 10;
    while (keep > 0 && prefix[keep - 1] == ' ')
      keep--;
    prefix[keep] = '\0';
    size_t o = 0;
    for (const char *c = prefix; *c; c++)
      out[o++] = *c;
    out[o++] = '*';
    out[o++] = ' ';
    for (const char *c = suffix; *c && o < TP_DESCRIPTOR_MAX; c++)
      out[o++] = (char)toupper((unsigned char)*c);
    out[o] = '\0';
  } else {
    memcpy(out, prefix, n + 1);
  }
}

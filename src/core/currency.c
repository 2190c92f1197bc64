/* ISO 4217 currency table, minimum charges and exact integer amount maths. */
#include "currency.h"

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Active ISO 4217 codes that have a minor unit, sorted by code so lookups
 * can bsearch. Precious metals, XDR, XSU, XUA, XBA-XBD, XTS and XXX have no
 * minor unit ("N.A.") and are left out on purpose: nobody charges a card in
 * them. Funds codes that do have a minor unit (CLF, UYW, BOV...) stay, since
 * some acquirers settle in them. ANG and XCG share numeric 532 while the
 * Caribbean guilder replaces the Netherlands Antillean guilder at par. */
static const struct tp_currency currencies[] = {
  {"aed", 784, 2}, {"afn", 971, 2}, {"all", 8, 2},   {"amd", 51, 2},
  {"ang", 532, 2}, {"aoa", 973, 2}, {"ars", 32, 2},  {"aud", 36, 2},
  {"awg", 533, 2}, {"azn", 944, 2}, {"bam", 977, 2}, {"bbd", 52, 2},
  {"bdt", 50, 2},  {"bgn", 975, 2}, {"bhd", 48, 3},  {"bif", 108, 0},
  {"bmd", 60, 2},  {"bnd", 96, 2},  {"bob", 68, 2},  {"bov", 984, 2},
  {"brl", 986, 2}, {"bsd", 44, 2},  {"btn", 64, 2},  {"bwp", 72, 2},
  {"byn", 933, 2}, {"bzd", 84, 2},  {"cad", 124, 2}, {"cdf", 976, 2},
  {"che", 947, 2}, {"chf", 756, 2}, {"chw", 948, 2}, {"clf", 990, 4},
  {"clp", 152, 0}, {"cny", 156, 2}, {"cop", 170, 2}, {"cou", 970, 2},
  {"crc", 188, 2}, {"cuc", 931, 2}, {"cup", 192, 2}, {"cve", 132, 2},
  {"czk", 203, 2}, {"djf", 262, 0}, {"dkk", 208, 2}, {"dop", 214, 2},
  {"dzd", 12, 2},  {"egp", 818, 2}, {"ern", 232, 2}, {"etb", 230, 2},
  {"eur", 978, 2}, {"fjd", 242, 2}, {"fkp", 238, 2}, {"gbp", 826, 2},
  {"gel", 981, 2}, {"ghs", 936, 2}, {"gip", 292, 2}, {"gmd", 270, 2},
  {"gnf", 324, 0}, {"gtq", 320, 2}, {"gyd", 328, 2}, {"hkd", 344, 2},
  {"hnl", 340, 2}, {"htg", 332, 2}, {"huf", 348, 2}, {"idr", 360, 2},
  {"ils", 376, 2}, {"inr", 356, 2}, {"iqd", 368, 3}, {"irr", 364, 2},
  {"isk", 352, 0}, {"jmd", 388, 2}, {"jod", 400, 3}, {"jpy", 392, 0},
  {"kes", 404, 2}, {"kgs", 417, 2}, {"khr", 116, 2}, {"kmf", 174, 0},
  {"kpw", 408, 2}, {"krw", 410, 0}, {"kwd", 414, 3}, {"kyd", 136, 2},
  {"kzt", 398, 2}, {"lak", 418, 2}, {"lbp", 422, 2}, {"lkr", 144, 2},
  {"lrd", 430, 2}, {"lsl", 426, 2}, {"lyd", 434, 3}, {"mad", 504, 2},
  {"mdl", 498, 2}, {"mga", 969, 2}, {"mkd", 807, 2}, {"mmk", 104, 2},
  {"mnt", 496, 2}, {"mop", 446, 2}, {"mru", 929, 2}, {"mur", 480, 2},
  {"mvr", 462, 2}, {"mwk", 454, 2}, {"mxn", 484, 2}, {"mxv", 979, 2},
  {"myr", 458, 2}, {"mzn", 943, 2}, {"nad", 516, 2}, {"ngn", 566, 2},
  {"nio", 558, 2}, {"nok", 578, 2}, {"npr", 524, 2}, {"nzd", 554, 2},
  {"omr", 512, 3}, {"pab", 590, 2}, {"pen", 604, 2}, {"pgk", 598, 2},
  {"php", 608, 2}, {"pkr", 586, 2}, {"pln", 985, 2}, {"pyg", 600, 0},
  {"qar", 634, 2}, {"ron", 946, 2}, {"rsd", 941, 2}, {"rub", 643, 2},
  {"rwf", 646, 0}, {"sar", 682, 2}, {"sbd", 90, 2},  {"scr", 690, 2},
  {"sdg", 938, 2}, {"sek", 752, 2}, {"sgd", 702, 2}, {"shp", 654, 2},
  {"sle", 925, 2}, {"sll", 694, 2}, {"sos", 706, 2}, {"srd", 968, 2},
  {"ssp", 728, 2}, {"stn", 930, 2}, {"svc", 222, 2}, {"syp", 760, 2},
  {"szl", 748, 2}, {"thb", 764, 2}, {"tjs", 972, 2}, {"tmt", 934, 2},
  {"tnd", 788, 3}, {"top", 776, 2}, {"try", 949, 2}, {"ttd", 780, 2},
  {"twd", 901, 2}, {"tzs", 834, 2}, {"uah", 980, 2}, {"ugx", 800, 0},
  {"usd", 840, 2}, {"usn", 997, 2}, {"uyi", 940, 0}, {"uyu", 858, 2},
  {"uyw", 927, 4}, {"uzs", 860, 2}, {"ved", 926, 2}, {"ves", 928, 2},
  {"vnd", 704, 0}, {"vuv", 548, 0}, {"wst", 882, 2}, {"xaf", 950, 0},
  {"xcd", 951, 2}, {"xcg", 532, 2}, {"xof", 952, 0}, {"xpf", 953, 0},
  {"yer", 886, 2}, {"zar", 710, 2}, {"zmw", 967, 2}, {"zwg", 924, 2},
};

#define TP_CURRENCY_N (sizeof currencies / sizeof currencies[0])

/* Minimums Stripe documents for the currencies merchants use most, plus the
 * zero-decimal ones where "half a unit" would be far below half a dollar.
 * Everything else falls back to half a major unit (see tp_currency_min_charge). */
static const struct {
  char code[4];
  int64_t min;
} min_charges[] = {
  {"aed", 200},  {"aud", 50},   {"bgn", 100},   {"brl", 50},   {"cad", 50},
  {"chf", 50},   {"clp", 500},  {"czk", 1500},  {"dkk", 250},  {"eur", 50},
  {"gbp", 30},   {"hkd", 400},  {"huf", 17500}, {"inr", 50},   {"isk", 100},
  {"jpy", 50},   {"krw", 700},  {"mxn", 1000},  {"myr", 200},  {"nok", 300},
  {"nzd", 50},   {"pln", 200},  {"ron", 200},   {"sek", 300},  {"sgd", 50},
  {"thb", 1000}, {"usd", 50},   {"vnd", 13000}, {"xaf", 300},  {"xof", 300},
  {"xpf", 60},
};

static int cmp_code(const void *key, const void *elem)
{
  const struct tp_currency *c = elem;
  return memcmp(key, c->code, 3);
}

/* Find a currency by its alphabetic code, case-insensitive; NULL if unknown. */
const struct tp_currency *tp_currency_find(const char *code)
{
  char key[3];
  if (code == NULL)
    return NULL;
  for (int i = 0; i < 3; i++) {
    char ch = code[i];
    if (ch >= 'A' && ch <= 'Z')
      ch = (char)(ch - 'A' + 'a');
    if (ch < 'a' || ch > 'z')
      return NULL; /* also stops at a short string's NUL */
    key[i] = ch;
  }
  if (code[3] != '\0')
    return NULL;
  return bsearch(key, currencies, TP_CURRENCY_N, sizeof currencies[0], cmp_code);
}

/* Find by ISO numeric code; NULL if unknown. A linear scan is fine for ~170
 * entries; for 532 the first match (ang) wins, which is the same money. */
const struct tp_currency *tp_currency_by_numeric(uint16_t numeric)
{
  for (size_t i = 0; i < TP_CURRENCY_N; i++)
    if (currencies[i].numeric == numeric)
      return &currencies[i];
  return NULL;
}

/* Number of currencies in the table. */
unsigned tp_currency_count(void)
{
  return (unsigned)TP_CURRENCY_N;
}

/* The i-th currency in code order, NULL past the end. */
const struct tp_currency *tp_currency_at(unsigned i)
{
  return i < TP_CURRENCY_N ? &currencies[i] : NULL;
}

/* Minimum charge in minor units: the explicit table, else half a major unit
 * (which is 1 for zero-decimal currencies: better too low than refusing). */
int64_t tp_currency_min_charge(const struct tp_currency *c)
{
  if (c == NULL)
    return 1;
  for (size_t i = 0; i < sizeof min_charges / sizeof min_charges[0]; i++)
    if (memcmp(min_charges[i].code, c->code, 3) == 0)
      return min_charges[i].min;
  int64_t unit = 1;
  for (unsigned e = 0; e < c->exponent; e++)
    unit *= 10;
  return unit / 2 >= 1 ? unit / 2 : 1;
}

/* 0 when amount is a chargeable amount for c, -1 otherwise. */
int tp_amount_check(int64_t amount, const struct tp_currency *c)
{
  if (c == NULL || amount < 1 || amount > TP_AMOUNT_MAX)
    return -1;
  return 0;
}

int tp_amount_card_check(int64_t amount, const struct tp_currency *c)
{
  return c != NULL && c->exponent == 3 && amount % 10 != 0 ? -1 : 0;
}

/* Format amount with c's exponent; snprintf semantics (returns the full
 * length, truncates to outlen - 1 bytes and always NUL-terminates). */
int tp_amount_format(char *out, unsigned outlen, int64_t amount, const struct tp_currency *c)
{
  char rev[32]; /* digits, least significant first */
  char buf[40];
  unsigned exp = c != NULL ? c->exponent : 2;
  /* Negate in unsigned arithmetic so INT64_MIN does not overflow. */
  uint64_t mag = amount < 0 ? 0 - (uint64_t)amount : (uint64_t)amount;
  size_t nd = 0, n = 0;

  do {
    rev[nd++] = (char)('0' + mag % 10);
    mag /= 10;
  } while (mag != 0);
  while (nd <= exp) /* at least one digit before the point */
    rev[nd++] = '0';

  if (amount < 0)
    buf[n++] = '-';
  for (size_t i = nd; i-- > 0;) {
    buf[n++] = rev[i];
    if (i == exp && exp > 0)
      buf[n++] = '.';
  }
  buf[n] = '\0';

  if (out != NULL && outlen > 0) {
    size_t k = n < outlen - 1 ? n : outlen - 1;
    memcpy(out, buf, k);
    out[k] = '\0';
  }
  return (int)n;
}

const char *tp_currency_symbol(const struct tp_currency *c)
{
  static const struct {
    char code[4];
    const char *sign;
  } signs[] = {{"usd", "$"},      {"eur", "\u20ac"}, {"gbp", "\u00a3"},
               {"jpy", "\u00a5"}, {"inr", "\u20b9"}, {"krw", "\u20a9"}};
  for (size_t i = 0; c != NULL && i < sizeof signs / sizeof signs[0]; i++)
    if (strcmp(c->code, signs[i].code) == 0)
      return signs[i].sign;
  return "";
}

int tp_amount_display(char *out, unsigned outlen, int64_t amount, const struct tp_currency *c)
{
  char num[40];
  tp_amount_format(num, sizeof num, amount, c);
  const char *sign = tp_currency_symbol(c);
  if (*sign) /* -$5.00, as Stripe writes it, not $-5.00 */
    return num[0] == '-' ? snprintf(out, outlen, "-%s%s", sign, num + 1) : snprintf(out, outlen, "%s%s", sign, num);
  return snprintf(out, outlen, "%s %s", num, c != NULL ? c->code : "");
}

/* Parse "[-]digits[.digits]" into minor units exactly. At most c->exponent
 * decimals are accepted: silently dropping "1.234 usd" to 123 would move
 * money. No exponent notation, spaces or '+'. */
int tp_amount_parse(const char *s, const struct tp_currency *c, int64_t *out)
{
  if (s == NULL || c == NULL || out == NULL)
    return -1;
  bool neg = false;
  if (*s == '-') {
    neg = true;
    s++;
  }
  uint64_t v = 0;
  unsigned int_digits = 0, decimals = 0;
  bool dot = false;
  const uint64_t limit = (uint64_t)INT64_MAX;

  for (; *s != '\0'; s++) {
    if (*s == '.') {
      if (dot || int_digits == 0)
        return -1;
      dot = true;
      continue;
    }
    if (*s < '0' || *s > '9')
      return -1;
    if (dot) {
      if (++decimals > c->exponent)
        return -1;
    } else {
      int_digits++;
    }
    unsigned d = (unsigned)(*s - '0');
    if (v > (limit - d) / 10)
      return -1;
    v = v * 10 + d;
  }
  if (int_digits == 0 || (dot && decimals == 0))
    return -1;
  for (unsigned e = decimals; e < c->exponent; e++) {
    if (v > limit / 10)
      return -1;
    v *= 10;
  }
  *out = neg ? -(int64_t)v : (int64_t)v;
  return 0;
}

/* amount * num / den rounded half to even, exact through a 128-bit product. */
int tp_amount_muldiv(int64_t amount, int64_t num, int64_t den, int64_t *out)
{
  if (den == 0 || out == NULL)
    return -1;
  __int128 p = (__int128)amount * num;
  __int128 q = p / den; /* truncates toward zero */
  __int128 r = p % den;
  if (r != 0) {
    __int128 ar = r < 0 ? -r : r;
    __int128 ad = den < 0 ? -(__int128)den : (__int128)den;
    bool away = 2 * ar > ad || (2 * ar == ad && (q & 1) != 0);
    if (away)
      q += ((p < 0) != (den < 0)) ? -1 : 1;
  }
  if (q > INT64_MAX || q < INT64_MIN)
    return -1;
  *out = (int64_t)q;
  return 0;
}

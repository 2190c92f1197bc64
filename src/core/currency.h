/* ISO 4217 currencies with their minor-unit exponents, and amount limits. */
#ifndef TP_CURRENCY_H
#define TP_CURRENCY_H
#include <stdbool.h>
#include <stdint.h>

struct tp_currency {
  char code[4];      /* lower case, as on Stripe's wire: "usd" */
  uint16_t numeric;  /* ISO 4217 numeric code, e.g. 840 (used by ISO 8583 field 49) */
  uint8_t exponent;  /* minor units: usd 2, jpy 0, kwd 3 */
};

/* Largest amount accepted in minor units (Stripe: 99999999 for 8 digits). */
#define TP_AMOUNT_MAX 99999999LL

/* Find a currency by its alphabetic code, case-insensitive; NULL if unknown
 * (funds codes and historic codes such as XXX, XTS are unknown). */
const struct tp_currency *tp_currency_find(const char *code);
/* Find by ISO numeric code; NULL if unknown. */
const struct tp_currency *tp_currency_by_numeric(uint16_t numeric);
/* Number of currencies in the table, and the i-th one (for docs/tests). */
unsigned tp_currency_count(void);
const struct tp_currency *tp_currency_at(unsigned i);

/* Minimum charge amount in minor units for a currency (Stripe-like: the
 * equivalent of about 0.50 USD; 50 for usd/eur/gbp..., 50 jpy, 500 kwd...). */
int64_t tp_currency_min_charge(const struct tp_currency *c);

/* 0 when amount is a valid charge amount for c (>= 1, <= TP_AMOUNT_MAX),
 * -1 otherwise. (Minimum charge is checked separately by the caller.) */
int tp_amount_check(int64_t amount, const struct tp_currency *c);

/* Stripe's rule for card payments in the three-decimal currencies (BHD,
 * JOD, KWD, OMR, TND): the last digit must be 0, since card networks carry
 * these amounts with two decimals. 0 when amount may be charged, captured or
 * refunded on a card in c, -1 otherwise (any amount for other currencies). */
int tp_amount_card_check(int64_t amount, const struct tp_currency *c);

/* Format an amount as a decimal string with the currency's exponent
 * ("12.34", "1234", "1.234"); returns bytes written (snprintf semantics). */
int tp_amount_format(char *out, unsigned outlen, int64_t amount, const struct tp_currency *c);

/* The currency's sign where it is one of its own ("$" for usd, "€", "£",
 * "¥", "₹", "₩"), "" otherwise; Stripe's messages put it before the
 * amount ("Refund amount ($20.00) ..."). UTF-8. */
const char *tp_currency_symbol(const struct tp_currency *c);

/* An amount as Stripe's messages show it: "$20.00", "€0.50", "¥500", or
 * "20.00 chf" for a currency without its own sign. snprintf semantics. */
int tp_amount_display(char *out, unsigned outlen, int64_t amount, const struct tp_currency *c);

/* Parse a decimal major-unit string ("12.34") into minor units exactly;
 * returns 0 on success, -1 on bad syntax, too many decimals or overflow. */
int tp_amount_parse(const char *s, const struct tp_currency *c, int64_t *out);

/* Multiply amount by num/den, rounding half to even, exactly (128-bit
 * intermediate). Returns 0 or -1 on overflow / den == 0. For fees and FX. */
int tp_amount_muldiv(int64_t amount, int64_t num, int64_t den, int64_t *out);
#endif

/* Card number validation: Luhn, brand by BIN range, lengths, CVC, expiry. */
#ifndef TP_CARD_H
#define TP_CARD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

enum tp_brand {
  TP_BRAND_UNKNOWN = 0,
  TP_BRAND_VISA,
  TP_BRAND_MASTERCARD,
  TP_BRAND_AMEX,
  TP_BRAND_DISCOVER,
  TP_BRAND_DINERS,
  TP_BRAND_JCB,
  TP_BRAND_UNIONPAY,
  TP_BRAND_MAESTRO,
  TP_BRAND__COUNT
};

/* Stripe's brand string: "visa", "mastercard", "amex", "discover", "diners",
 * "jcb", "unionpay", "maestro" (not a Stripe brand but ours), "unknown". */
const char *tp_brand_name(enum tp_brand b);
enum tp_brand tp_brand_from_name(const char *s);

/* Luhn checksum over a string of digits only; false on any non-digit. */
bool tp_luhn_ok(const char *digits, size_t len);

/* Brand by IIN/BIN range of the leading digits (works with >= 6 digits).
 * Ranges: visa 4; mastercard 51-55, 2221-2720; amex 34,37; discover 6011,
 * 644-649, 65, 622126-622925 (co-branded, prefer discover); diners 300-305,
 * 36, 38, 39; jcb 3528-3589; unionpay 62, 81; maestro 50, 56-58, 6304,
 * 6759, 676770, 676774, 6761-6763 (and others 6 not matched above). */
enum tp_brand tp_card_brand(const char *digits, size_t len);

/* true if len is a valid PAN length for the brand (visa 13,16,19; mc 16;
 * amex 15; discover 16-19; diners 14-19; jcb 16-19; unionpay 16-19;
 * maestro 12-19). */
bool tp_card_length_ok(enum tp_brand b, size_t len);
/* Expected CVC length: 4 for amex, 3 otherwise. */
unsigned tp_card_cvc_len(enum tp_brand b);

/* Stripe's error codes for card validation. */
enum tp_card_check {
  TP_CARD_OK = 0,
  TP_CARD_INCORRECT_NUMBER,      /* Luhn, unknown brand, a length the brand has not -> param card[number] */
  TP_CARD_INVALID_EXPIRY_MONTH,  /* not 1..12 -> card[exp_month] */
  TP_CARD_INVALID_EXPIRY_YEAR,   /* < 2000-ish nonsense or > now+50 -> card[exp_year] */
  TP_CARD_EXPIRED,               /* month/year in the past -> code expired_card, param card[exp_month] */
  TP_CARD_INVALID_CVC,           /* wrong length / non-digits -> card[cvc] */
  TP_CARD_INVALID_NUMBER,        /* not a card number at all: other characters, 12-19 digits not -> card[number] */
};

struct tp_card_input {
  const char *number;   /* as given; spaces and dashes are allowed and stripped */
  int exp_month;
  int exp_year;         /* 2-digit years (< 100) mean 2000 + yy */
  const char *cvc;      /* may be NULL (CVC optional) */
};

struct tp_card_info {
  char pan[20];         /* digits only, NUL-terminated */
  unsigned pan_len;
  enum tp_brand brand;
  char last4[5];
  char bin[9];          /* first 6 (or 8 for len>=16) digits */
  int exp_month;
  int exp_year;         /* four digits */
  const char *funding;  /* "credit" | "debit" | "prepaid" | "unknown": from a small test-BIN table, default "credit" */
  const char *country;  /* ISO 3166 alpha-2 from a small test-BIN table, default "US" (e.g. 4000002760003184 -> "DE") */
  char token[64];       /* the card token (POST /v1/tokens) it came from, "" if none: using it spends the token */
  char card_id[64];     /* that token's Card id (card_...), which a Card made of it keeps, as on Stripe */
  bool cvc;             /* a CVC came with the card (now, with its token or saved card, or a test card's): set
                           by the API layer, not by tp_card_validate */
};

/* Validate and normalize. `now` is the current Unix time (for expiry).
 * On error returns the code and sets *param to the Stripe param name
 * ("number", "exp_month", "exp_year", "cvc"), info is left partially filled.
 * A card is expired when (exp_year, exp_month) is before the current UTC month. */
enum tp_card_check tp_card_validate(const struct tp_card_input *in, time_t now,
                                    struct tp_card_info *info, const char **param);

/* Wipe a buffer holding card data in a way the compiler will not remove. */
void tp_card_wipe(void *p, size_t n);

/* The statement descriptor a charge shows (Stripe's
 * calculated_statement_descriptor): the PaymentIntent's descriptor, else the
 * merchant's name, upper case, at most 22 characters; with a suffix the
 * prefix is cut to 10 and "PREFIX* SUFFIX" is shown. "" when all are empty. */
#define TP_DESCRIPTOR_MAX 22
void tp_calculated_descriptor(char out[TP_DESCRIPTOR_MAX + 1], const char *descriptor, const char *suffix,
                              const char *merchant_name);

#endif

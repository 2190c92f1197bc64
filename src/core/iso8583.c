/* ISO 8583:1987 codec with a binary bitmap and the ASCII field layout of
 * jPOS ISO87APackager. Every byte read is bounds-checked; messages are data
 * from a network peer. */
#include "core/iso8583.h"

#include "core/currency.h"
#include "tp_errors.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Character classes of field contents. */
enum iso_kind {
  K_N,   /* digits */
  K_AN,  /* an / ans: printable ASCII 0x20-0x7e (we do not split an from ans) */
  K_B,   /* binary, carried as hex: 2 characters per byte */
  K_XN,  /* 'C' or 'D' then digits (amount with sign, x+n) */
  K_Z,   /* track data: digits, '=', 'D' */
};

/* prefix: 0 fixed length, 2 LLVAR, 3 LLLVAR. max: characters on the wire. */
struct iso_field {
  uint8_t kind, prefix;
  uint16_t max;
};

#define FN(n) {K_N, 0, n}
#define FA(n) {K_AN, 0, n}
#define FB(bytes) {K_B, 0, 2 * (bytes)}
#define FX(n) {K_XN, 0, 1 + (n)}
#define LN(n) {K_N, 2, n}
#define LA(n) {K_AN, 2, n}
#define LLA(n) {K_AN, 3, n}
#define LLN(n) {K_N, 3, n}

static const struct iso_field fields[TP_ISO_FIELDS + 1] = {
    [0] = {0, 0, 0},         [1] = FB(8), /* bitmaps: handled apart */
    [2] = LN(19),            [3] = FN(6),       [4] = FN(12),      [5] = FN(12),
    [6] = FN(12),            [7] = FN(10),      [8] = FN(8),       [9] = FN(8),
    [10] = FN(8),            [11] = FN(6),      [12] = FN(6),      [13] = FN(4),
    [14] = FN(4),            [15] = FN(4),      [16] = FN(4),      [17] = FN(4),
    [18] = FN(4),            [19] = FN(3),      [20] = FN(3),      [21] = FN(3),
    [22] = FN(3),            [23] = FN(3),      [24] = FN(3),      [25] = FN(2),
    [26] = FN(2),            [27] = FN(1),      [28] = FX(8),      [29] = FX(8),
    [30] = FX(8),            [31] = FX(8),      [32] = LN(11),     [33] = LN(11),
    [34] = LA(28),           [35] = {K_Z, 2, 37}, [36] = LLA(104), [37] = FA(12),
    [38] = FA(6),            [39] = FA(2),      [40] = FA(3),      [41] = FA(8),
    [42] = FA(15),           [43] = FA(40),     [44] = LA(25),     [45] = LA(76),
    [46] = LLA(999),         [47] = LLA(999),   [48] = LLA(999),   [49] = FA(3),
    [50] = FA(3),            [51] = FA(3),      [52] = FB(8),      [53] = FN(16),
    [54] = LLA(120),         [55] = LLA(999),   [56] = LLA(999),   [57] = LLA(999),
    [58] = LLA(999),         [59] = LLA(999),   [60] = LLA(999),   [61] = LLA(999),
    [62] = LLA(999),         [63] = LLA(999),   [64] = FB(8),      [65] = FB(1),
    [66] = FN(1),            [67] = FN(2),      [68] = FN(3),      [69] = FN(3),
    [70] = FN(3),            [71] = FN(4),      [72] = FN(4),      [73] = FN(6),
    [74] = FN(10),           [75] = FN(10),     [76] = FN(10),     [77] = FN(10),
    [78] = FN(10),           [79] = FN(10),     [80] = FN(10),     [81] = FN(10),
    [82] = FN(12),           [83] = FN(12),     [84] = FN(12),     [85] = FN(12),
    [86] = FN(16),           [87] = FN(16),     [88] = FN(16),     [89] = FN(16),
    [90] = FN(42),           [91] = FA(1),      [92] = FA(2),      [93] = FA(6),
    [94] = FA(7),            [95] = FA(42),     [96] = FB(16),      [97] = FX(16),
    [98] = FA(25),           [99] = LN(11),     [100] = LN(11),    [101] = LA(17),
    [102] = LA(28),          [103] = LA(28),    [104] = LLA(100),  [105] = LLA(999),
    [106] = LLA(999),        [107] = LLA(999),  [108] = LLA(999),  [109] = LLA(999),
    [110] = LLA(999),        [111] = LLA(999),  [112] = LLA(999),  [113] = LLA(999),
    [114] = LLA(999),        [115] = LLA(999),  [116] = LLA(999),  [117] = LLA(999),
    [118] = LLA(999),        [119] = LLA(999),  [120] = LLA(999),  [121] = LLA(999),
    [122] = LLA(999),        [123] = LLA(999),  [124] = LLA(999),  [125] = LLA(999),
    [126] = LLA(999),        [127] = LLA(999),  [128] = FB(8),
};

static bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static bool is_hex(uint8_t c) { return is_digit(c) || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); }

/* Do n bytes of s fit field fd's character class? */
static bool chars_ok(const struct iso_field *fd, const uint8_t *s, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    switch (fd->kind) {
    case K_N:
      if (!is_digit(c))
        return false;
      break;
    case K_AN:
      if (c < 0x20 || c > 0x7e)
        return false;
      break;
    case K_B:
      if (!is_hex(c))
        return false;
      break;
    case K_XN:
      if (i == 0 ? (c != 'C' && c != 'D') : !is_digit(c))
        return false;
      break;
    case K_Z:
      if (!is_digit(c) && c != '=' && c != 'D')
        return false;
      break;
    default:
      return false;
    }
  }
  return true;
}

static bool field_ok(int n, const char *v, size_t len)
{
  const struct iso_field *fd = &fields[n];
  if (fd->prefix == 0 ? len != fd->max : len > fd->max)
    return false;
  return chars_ok(fd, (const uint8_t *)v, len);
}

static bool mti_ok(const char *mti)
{
  for (int i = 0; i < 4; i++)
    if (!is_digit((uint8_t)mti[i]))
      return false;
  return mti[4] == '\0';
}

void tp_iso_init(struct tp_iso_msg *m, const char *mti)
{
  memset(m, 0, sizeof *m);
  if (mti)
    tp_scopy(m->mti, sizeof m->mti, mti);
}

static void free_field(char **p)
{
  if (*p) {
    explicit_bzero(*p, strlen(*p));
    free(*p);
    *p = NULL;
  }
}

void tp_iso_free(struct tp_iso_msg *m)
{
  for (int i = 0; i <= TP_ISO_FIELDS; i++)
    free_field(&m->f[i]);
}

int tp_iso_set(struct tp_iso_msg *m, int field, const char *value)
{
  if (field < 2 || field > TP_ISO_FIELDS)
    return -1;
  if (value == NULL) {
    free_field(&m->f[field]);
    return 0;
  }
  const struct iso_field *fd = &fields[field];
  size_t len = strnlen(value, (size_t)fd->max + 1);
  if (len > fd->max)
    return -1;
  size_t out_len = fd->prefix == 0 ? fd->max : len;
  char *v = malloc(out_len + 1);
  if (!v)
    return -1;
  /* Pad short fixed fields the way the standard does: numbers right-
   * justified with zeros, text left-justified with spaces. */
  size_t pad = out_len - len;
  if (fd->prefix == 0 && fd->kind == K_N) {
    memset(v, '0', pad);
    memcpy(v + pad, value, len);
  } else if (fd->prefix == 0 && fd->kind == K_AN) {
    memcpy(v, value, len);
    memset(v + len, ' ', pad);
  } else if (pad != 0) { /* binary and signed amounts: exact length only */
    free(v);
    return -1;
  } else {
    memcpy(v, value, len);
  }
  v[out_len] = '\0';
  if (!field_ok(field, v, out_len)) {
    explicit_bzero(v, out_len);
    free(v);
    return -1;
  }
  free_field(&m->f[field]);
  m->f[field] = v;
  return 0;
}

const char *tp_iso_get(const struct tp_iso_msg *m, int field)
{
  if (field < 2 || field > TP_ISO_FIELDS)
    return NULL;
  return m->f[field];
}

int tp_iso_pack(const struct tp_iso_msg *m, uint8_t *out, size_t cap)
{
  if (!mti_ok(m->mti))
    return -1;
  bool secondary = false;
  for (int i = 65; i <= TP_ISO_FIELDS; i++)
    if (m->f[i])
      secondary = true;
  size_t limit = cap < TP_ISO_MAX_MSG ? cap : TP_ISO_MAX_MSG;
  size_t bm_len = secondary ? 16 : 8;
  if (limit < 4 + bm_len)
    return -1;
  memcpy(out, m->mti, 4);
  uint8_t *bm = out + 4;
  memset(bm, 0, bm_len);
  if (secondary)
    bm[0] |= 0x80;
  size_t pos = 4 + bm_len;
  for (int i = 2; i <= TP_ISO_FIELDS; i++) {
    const char *v = m->f[i];
    if (!v)
      continue;
    const struct iso_field *fd = &fields[i];
    size_t len = strnlen(v, (size_t)fd->max + 1);
    if (!field_ok(i, v, len))
      return -1;
    if (pos + fd->prefix + len > limit)
      return -1;
    if (fd->prefix == 2) {
      out[pos++] = (uint8_t)('0' + len / 10);
      out[pos++] = (uint8_t)('0' + len % 10);
    } else if (fd->prefix == 3) {
      out[pos++] = (uint8_t)('0' + len / 100);
      out[pos++] = (uint8_t)('0' + len / 10 % 10);
      out[pos++] = (uint8_t)('0' + len % 10);
    }
    memcpy(out + pos, v, len);
    pos += len;
    bm[(i - 1) / 8] |= (uint8_t)(0x80 >> ((i - 1) % 8));
  }
  return (int)pos;
}

static void set_err(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t cap, const char *fmt, ...)
{
  if (!err || cap == 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, cap, fmt, ap);
  va_end(ap);
}

int tp_iso_unpack(struct tp_iso_msg *m, const uint8_t *in, size_t len, char *err, size_t errcap)
{
  tp_iso_init(m, NULL);
  set_err(err, errcap, "ok");
  if (len > TP_ISO_MAX_MSG) {
    set_err(err, errcap, "message of %zu bytes exceeds the %d-byte limit", len, TP_ISO_MAX_MSG);
    return -1;
  }
  if (len < 4 + 8) {
    set_err(err, errcap, "message of %zu bytes is shorter than MTI and primary bitmap", len);
    return -1;
  }
  for (int i = 0; i < 4; i++)
    if (!is_digit(in[i])) {
      set_err(err, errcap, "MTI is not 4 ASCII digits");
      return -1;
    }
  memcpy(m->mti, in, 4);
  m->mti[4] = '\0';
  uint8_t bm[16] = {0};
  memcpy(bm, in + 4, 8);
  size_t pos = 12;
  if (bm[0] & 0x80) {
    if (len < pos + 8) {
      set_err(err, errcap, "secondary bitmap announced but message ends at byte %zu", len);
      goto fail;
    }
    memcpy(bm + 8, in + pos, 8);
    pos += 8;
  }
  for (int i = 2; i <= TP_ISO_FIELDS; i++) {
    if (!(bm[(i - 1) / 8] & (0x80 >> ((i - 1) % 8))))
      continue;
    const struct iso_field *fd = &fields[i];
    size_t flen = fd->max;
    if (fd->prefix) {
      if (len - pos < fd->prefix) {
        set_err(err, errcap, "field %d: length prefix truncated at byte %zu", i, pos);
        goto fail;
      }
      flen = 0;
      for (int k = 0; k < fd->prefix; k++) {
        if (!is_digit(in[pos + (size_t)k])) {
          set_err(err, errcap, "field %d: length prefix is not ASCII digits", i);
          goto fail;
        }
        flen = flen * 10 + (size_t)(in[pos + (size_t)k] - '0');
      }
      pos += fd->prefix;
      if (flen > fd->max) {
        set_err(err, errcap, "field %d: length %zu exceeds its maximum %u", i, flen, fd->max);
        goto fail;
      }
    }
    if (len - pos < flen) {
      set_err(err, errcap, "field %d: %zu bytes announced, %zu left", i, flen, len - pos);
      goto fail;
    }
    if (!chars_ok(fd, in + pos, flen)) {
      set_err(err, errcap, "field %d: invalid character for its type", i);
      goto fail;
    }
    char *v = malloc(flen + 1);
    if (!v) {
      set_err(err, errcap, "out of memory");
      goto fail;
    }
    memcpy(v, in + pos, flen);
    v[flen] = '\0';
    m->f[i] = v;
    pos += flen;
  }
  if (pos != len) {
    set_err(err, errcap, "%zu trailing bytes after the last field", len - pos);
    goto fail;
  }
  return 0;
fail:
  tp_iso_free(m);
  m->mti[0] = '\0';
  return -1;
}

int tp_iso_frame(const struct tp_iso_msg *m, uint8_t *out, size_t cap)
{
  if (cap < 2)
    return -1;
  int n = tp_iso_pack(m, out + 2, cap - 2);
  if (n < 0)
    return -1;
  out[0] = (uint8_t)(n >> 8);
  out[1] = (uint8_t)(n & 0xff);
  return n + 2;
}

/* --- field 39 ------------------------------------------------------------ */

/* Two letters or digits: every code the table could name. Anything else
 * (a space, punctuation) is malformed, which reads as processing_error. */
bool tp_iso_f39_well_formed(const char *f39)
{
  if (!f39 || strlen(f39) != 2)
    return false;
  for (int i = 0; i < 2; i++)
    if (!is_digit((uint8_t)f39[i]) && !((f39[i] >= 'A' && f39[i] <= 'Z') || (f39[i] >= 'a' && f39[i] <= 'z')))
      return false;
  return true;
}

bool tp_iso_f39_approved(const char *f39)
{
  return tp_iso_f39_well_formed(f39) && tp_iso_code_is_approval(f39);
}

const char *tp_iso_decline_code(const char *f39)
{
  if (!tp_iso_f39_well_formed(f39))
    return "processing_error";
  if (tp_iso_code_is_approval(f39))
    return "";
  const struct tp_error_info *e = tp_error_by_iso_code(f39);
  if (e && e->decline_code)
    return e->decline_code;
  /* An issuer said no for a reason we do not know: a decline, not a
   * failure, so it is not cascaded. */
  return "generic_decline";
}

bool tp_iso_f39_transient(const char *f39)
{
  if (!tp_iso_f39_well_formed(f39))
    return true; /* garbled answer: nothing known to be charged or refused */
  const struct tp_error_info *e = tp_error_by_iso_code(f39);
  return e && e->retryable;
}

/* The preferred code for each decline; others are found in the registry. */
static const struct {
  const char *decline, *f39;
} f39_pref[] = {
    {"generic_decline", "05"},     {"do_not_honor", "05"},       {"incorrect_number", "14"},
    {"invalid_number", "15"},      {"lost_card", "41"},          {"stolen_card", "43"},
    {"insufficient_funds", "51"},  {"expired_card", "54"},       {"incorrect_pin", "55"},
    {"fraudulent", "59"},          {"withdrawal_count_limit_exceeded", "61"},
    {"card_velocity_exceeded", "65"}, {"incorrect_cvc", "N7"},   {"issuer_not_available", "91"},
    {"processing_error", "96"},    {"try_again_later", "90"},    {"call_issuer", "01"},
    {"pickup_card", "04"},         {"transaction_not_allowed", "57"}, {"restricted_card", "62"},
    {"invalid_amount", "13"},      {"duplicate_transaction", "94"}, {"pin_try_exceeded", "75"},
    {"security_violation", "63"},  {"not_permitted", "58"},      {"card_not_supported", "31"},
    {"invalid_account", "56"},     {"authentication_required", "1A"},
    {"approve_with_id", "08"},     {"invalid_pin", "81"},        {"no_action_taken", "21"},
    {"reenter_transaction", "19"}, {"revocation_of_all_authorizations", "R3"},
    {"revocation_of_authorization", "R1"}, {"stop_payment_order", "R0"},
};

const char *tp_iso_f39_for_decline(const char *decline)
{
  if (!decline || !*decline)
    return "00";
  for (size_t i = 0; i < sizeof f39_pref / sizeof f39_pref[0]; i++)
    if (strcmp(decline, f39_pref[i].decline) == 0)
      return f39_pref[i].f39;
  return "05";
}

/* --- currencies, references, logging -------------------------------------- */

int tp_iso_currency_numeric(const char *alpha, char out[4])
{
  const struct tp_currency *c = tp_currency_find(alpha);
  if (!c || c->numeric == 0 || c->numeric > 999)
    return -1;
  snprintf(out, 4, "%03u", (unsigned)c->numeric);
  return 0;
}

const char *tp_iso_currency_alpha(const char *f49)
{
  if (!f49 || strlen(f49) != 3 || !chars_ok(&fields[3], (const uint8_t *)f49, 3))
    return NULL;
  const struct tp_currency *c = tp_currency_by_numeric((uint16_t)atoi(f49));
  return c ? c->code : NULL;
}

void tp_iso_rrn(const char *ref, char out[13])
{
  static const char alnum[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  uint8_t h[32];
  tp_sha256(ref, strlen(ref), h);
  for (int i = 0; i < 12; i++)
    out[i] = alnum[h[i] % 36]; /* 256 % 36 bias is irrelevant for a reference */
  out[12] = '\0';
}

void tp_iso_describe(const struct tp_iso_msg *m, char *out, size_t cap)
{
  if (cap == 0)
    return;
  size_t pos = 0;
  int n = snprintf(out, cap, "%s", m->mti[0] ? m->mti : "????");
  pos = n > 0 ? (size_t)n : 0;
  for (int i = 2; i <= TP_ISO_FIELDS && pos < cap; i++) {
    const char *v = m->f[i];
    if (!v)
      continue;
    /* Card data never shown: expiry (14), extended PAN (34), tracks (35,
     * 36, 45), PIN and security data (52, 53), ICC data (55: EMV tags 5A
     * and 57 are the PAN and track 2), message security code (96). */
    if (i == 14 || i == 34 || i == 35 || i == 36 || i == 45 || i == 52 || i == 53 || i == 55 || i == 96) {
      n = snprintf(out + pos, cap - pos, " %d=*", i);
    } else if (i == 2) {
      size_t l = strlen(v);
      n = snprintf(out + pos, cap - pos, " 2=*%s", l > 4 ? v + l - 4 : "");
    } else {
      /* A card number a host put in another field (private use 48, 60-63,
       * 120-127 ...) is masked; the fields whose format holds codes,
       * amounts, dates and references (an amount is 12 digits) are not. */
      static const unsigned char plain[] = {3,  4,  7,  11, 12, 13, 18, 22, 25, 32, 33,
                                            37, 38, 39, 41, 42, 49, 54, 70, 90, 95};
      /* masked whole, then cut: a number across the cut kept its first
       * digits, under the run the mask takes for a card number */
      char val[256];
      snprintf(val, sizeof val, "%s", v);
      if (!memchr(plain, i, sizeof plain))
        tp_mask_card_numbers(val);
      n = snprintf(out + pos, cap - pos, " %d=%.40s", i, val);
    }
    if (n < 0)
      break;
    pos += (size_t)n;
  }
}

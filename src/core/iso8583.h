/* ISO 8583:1987 codec: the wire format Turnpike's connector and the
 * simulator's acquirer host both speak. Pure code: no sockets, no threads.
 *
 * Wire format (docs/iso8583.md has the full field table):
 *   2-byte big-endian length (tp_iso_frame only) | MTI, 4 ASCII digits |
 *   primary bitmap, 8 BINARY bytes | secondary bitmap, 8 binary bytes, only
 *   when a field 65-128 is present (bit 1) | fields 2..128 in order, ASCII,
 *   variable ones with ASCII LL / LLL length prefixes, as jPOS ISO87APackager
 *   lays them out. Binary fields (52, 64, 65, 96, 128) travel as ASCII hex,
 *   2 characters per byte, as ISO87APackager's IFA_BINARY does. */
#ifndef TP_ISO8583_H
#define TP_ISO8583_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TP_ISO_MAX_MSG 8192 /* largest message body we accept or build */
#define TP_ISO_FIELDS 128

/* A message: f[n] is a NUL-terminated heap string, or NULL when field n is
 * absent. f[0] and f[1] (the secondary bitmap) are never used. */
struct tp_iso_msg {
  char mti[5];
  char *f[TP_ISO_FIELDS + 1];
};

/* Start an empty message with this MTI (4 digits; copied, may be NULL). */
void tp_iso_init(struct tp_iso_msg *m, const char *mti);
/* Wipe (field values may hold a PAN) and free every field; m is then empty. */
void tp_iso_free(struct tp_iso_msg *m);
/* Set field 2..128 to a copy of value after checking it against the field
 * table: fixed numeric fields shorter than their size are left-padded with
 * '0', fixed character fields right-padded with ' '; value NULL removes the
 * field. 0, or -1 (field unchanged) on a bad field number, character or
 * length. */
int tp_iso_set(struct tp_iso_msg *m, int field, const char *value);
/* Field n's value; NULL when absent or n is out of range. */
const char *tp_iso_get(const struct tp_iso_msg *m, int field);
/* Pack the message body WITHOUT the 2-byte length. Returns its length, or
 * -1 when a field is invalid, the MTI is not 4 digits, or it exceeds cap or
 * TP_ISO_MAX_MSG. */
int tp_iso_pack(const struct tp_iso_msg *m, uint8_t *out, size_t cap);
/* Parse a message body (without the 2-byte length). m is overwritten (free
 * it first when reusing it). 0, or -1 with m empty and a reason in err (never
 * field contents). Every length, prefix, character and bound is checked;
 * trailing bytes are an error. A secondary bitmap with no field 65-128 set is
 * accepted. */
int tp_iso_unpack(struct tp_iso_msg *m, const uint8_t *in, size_t len, char *err, size_t errcap);
/* 2-byte big-endian length + body; returns the total length or -1. */
int tp_iso_frame(const struct tp_iso_msg *m, uint8_t *out, size_t cap);

/* Field 39 -> Stripe decline_code through errors/registry.tsv (iso_XX rows):
 * "" for approval codes (00, 10, 11, 16, 85), "generic_decline" for a code
 * the registry does not know, "processing_error" for NULL or malformed. */
const char *tp_iso_decline_code(const char *f39);
/* Stripe decline_code -> field 39, for the simulator ("00" for "" / NULL,
 * "05" for unknown codes). Round-trips through tp_iso_decline_code except for
 * generic_decline, which goes out as 05 (do_not_honor). */
const char *tp_iso_f39_for_decline(const char *decline);
/* True when a field 39 code is a soft failure worth retrying or cascading
 * to another processor (91, 96, 19, ...: the registry's retryable column). */
bool tp_iso_f39_transient(const char *f39);
/* True when field 39 approves. */
bool tp_iso_f39_approved(const char *f39);
/* True when field 39 is two letters or digits (a code, known or not). */
bool tp_iso_f39_well_formed(const char *f39);

/* Field 49 for an alphabetic currency ("usd" -> "840"); -1 if unknown. */
int tp_iso_currency_numeric(const char *alpha, char out[4]);
/* Alphabetic code for a field 49 value ("840" -> "usd"); NULL if unknown. */
const char *tp_iso_currency_alpha(const char *f49);

/* Retrieval reference number (field 37) derived from our idempotency ref:
 * 12 upper-case alphanumerics from SHA-256(ref), so a reversal after a crash
 * needs only the attempt record. */
void tp_iso_rrn(const char *ref, char out[13]);
/* A log-safe one-line summary ("0110 11=000123 39=05 ..."): field 2 is
 * masked to its last 4 digits, 14/35/45/52 (expiry, tracks, PIN) omitted. */
void tp_iso_describe(const struct tp_iso_msg *m, char *out, size_t cap);
#endif

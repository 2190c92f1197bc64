/* Small shared helpers: ids, hashing, randomness, time. */
#ifndef TP_UTIL_H
#define TP_UTIL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define TP_ID_MAX 64

/* New Stripe-style id "<prefix>_<24 chars>": 8 chars of milliseconds, 3 of a
 * per-process sequence, 13 random, all base62 in ASCII order, so ids sort by
 * creation time (lists page in order) and never repeat within a process. */
void tp_id_new(char out[TP_ID_MAX], const char *prefix);
/* "<prefix>_" and the 8 time characters of unix millisecond ms: every id
 * tp_id_new made before ms sorts below it, every one made at or after ms
 * at or above it (retention cut-offs on the id keys). */
void tp_id_floor(char out[TP_ID_MAX], const char *prefix, int64_t ms);
/* The unix milliseconds an id of tp_id_new carries, or -1 if id is not one. */
int64_t tp_id_ms(const char *id);
/* Ids made from now on sort above every id made at or before ms, even if
 * the wall clock is behind it (a clock stepped back across a restart): the
 * time part continues from ms until the clock passes it. */
void tp_id_seed(int64_t ms);
/* An id's time part can run ahead of the wall clock (after a clock stepped
 * back), and so of its object's created. Once it has run ahead by more than
 * TP_ID_AHEAD_MS the mark is set (and kept in the store's meta table), and
 * ids no longer bound a created range from above. */
#define TP_ID_AHEAD_MS 1000
/* An id carries its time in 8 base62 digits: milliseconds modulo 62^8
 * (the year 8888). A created bound at or past it cannot be made an id. */
#define TP_ID_TIME_LIMIT_S (218340105584896LL / 1000)
bool tp_ids_ran_ahead(void);
void tp_ids_ran_ahead_set(void);

/* Cryptographically random bytes; aborts if the RNG fails (never fall back). */
void tp_random(void *buf, size_t n);
/* A random (version 4) UUID, RFC 9562, lower-case: 36 characters and a NUL. */
void tp_uuid4(char out[37]);
/* Random base62 string of n chars, NUL-terminated (out has n+1 bytes). */
void tp_random_b62(char *out, size_t n);

/* SHA-256 of data into out[32]; hex variant writes 64 chars + NUL. */
void tp_sha256(const void *data, size_t len, uint8_t out[32]);
void tp_sha256_hex(const void *data, size_t len, char out[65]);
/* The value of one hex digit (either case), -1 for any other character. */
int tp_hex_digit(int c);
/* HMAC-SHA-256 (RFC 2104) into 32 raw bytes. */
void tp_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len, uint8_t out[32]);
/* HMAC-SHA-256 as 64 hex digits. */
void tp_hmac_sha256_hex(const void *key, size_t keylen, const void *data, size_t len, char out[65]);
/* What meta.vault_key_check holds for a store sealed under vault.key = key:
 * a store and a data directory's key are told apart by it. */
void tp_vault_key_check_value(const uint8_t key[32], char out[65]);
void tp_hex(const uint8_t *in, size_t n, char *out);

/* Unix seconds, and a monotonic clock in ms / ns. */
int64_t tp_now(void);
int64_t tp_mono_ms(void);
int64_t tp_mono_ns(void);
/* A condition variable whose timed waits are on the monotonic clock, and
 * such a deadline ms from now: a wall clock stepped back (NTP, a restored
 * snapshot) must not stall a thread that waits for a period. */
struct timespec;
void tp_cond_init_mono(void *cond); /* a pthread_cond_t * */
void tp_mono_deadline(struct timespec *ts, int64_t ms);

/* Copy the string src into dst of cap bytes, cut to fit and always
 * terminated (cap > 0), like snprintf(dst, cap, "%s", src) at a tenth of the
 * cost: the hot paths copy ids, codes and names into fixed fields dozens of
 * times per payment. Returns strlen(src) (at most INT_MAX), so a result >= cap
 * means the copy was cut. */
int tp_scopy(char *dst, size_t cap, const char *src);
/* s is a reference token: at most max bytes of [A-Za-z0-9_-] (empty
 * passes). What our references to processors are made of, and so what may
 * go into a URL path segment or be recorded as a processor's reference. */
bool tp_token_ok(const char *s, size_t max);
/* Constant-time comparison of two equal-length buffers. */
int tp_ct_equal(const void *a, const void *b, size_t n);
/* Append n bytes of a request body to *buf (kept NUL-terminated), growing
 * it by doubling. Past max bytes nothing more is kept and *too_large is set
 * (the caller drains and answers an error at the end). A grown buffer's old
 * copy is wiped: bodies may hold card numbers. 0, or -1 out of memory. */
int tp_body_append(char **buf, size_t *len, size_t *cap, bool *too_large, const char *data, size_t n, size_t max);
/* Wipe and free a body buffer of capacity cap. */
void tp_body_free(char *buf, size_t cap);

/* fsync the directory that holds path ("." when path has no '/'), so a
 * rename or a new file in it is durable. 0 or -1 (errno). */
int tp_fsync_dir_of(const char *path);

/* The length of the UTF-8 sequence at p, whose first byte is >= 0x80, if
 * it is valid RFC 3629 (no overlong form, no surrogate, nothing past
 * U+10FFFF) and ends by end; else 0. Used by the JSON builder and reader. */
size_t tp_utf8_char_len(const unsigned char *p, const unsigned char *end);
/* Whether the n bytes at s are valid UTF-8 (as tp_utf8_char_len). */
bool tp_utf8_valid(const void *s, size_t n);
/* Make s valid UTF-8 in place: each byte of an invalid or cut sequence becomes '?'. */
void tp_utf8_scrub(char *s);
/* Characters (code points) of a UTF-8 string (its continuation bytes not
 * counted): Stripe's limits on text count characters, not bytes. 0 for NULL. */
size_t tp_utf8_chars(const char *s);
/* A new string: s with every character in its Unicode lower case (simple
 * mapping, as towlower in C.UTF-8: "Élodie" -> "élodie"), but for the two
 * whose lower case is ASCII ("İ", KELVIN SIGN), kept so that ASCII folds
 * only from ASCII as in SQLite's lower(); bytes that are not valid UTF-8
 * copied as they are. Search folds case with it. Aborts on no memory. */
char *tp_utf8_lower(const char *s);

/* Whether an IPv4 or IPv6 address is publicly routable: false for
 * loopback, private (RFC 1918, ULA), shared (100.64/10), link-local,
 * unspecified, documentation, benchmarking, multicast and reserved ranges,
 * and for IPv6 forms that embed such an IPv4 address (mapped, compatible,
 * NAT64 64:ff9b::/96, 6to4). Any other family: false. */
struct sockaddr;
bool tp_addr_is_public(const struct sockaddr *sa);
/* The same for the text of an address literal ("10.0.0.1", "::1", "[::1]"):
 * 1 public, 0 not, -1 when the text is not an address literal. */
int tp_addr_text_is_public(const char *host);

/* Replace with '*' the digits of every run that could be a card number:
 * 12 or more digits, single spaces or dashes between them allowed
 * ("4242 4242 4242 4242"). For text that echoes client input (error
 * messages), which must never carry a PAN. Returns how many runs it masked. */
int tp_mask_card_numbers(char *s);
/* Drop trailing spaces and tabs (a header field value's optional whitespace, RFC 9110 5.5). */
void tp_rtrim_ows(char *s);
/* The credentials of an HTTP Basic Authorization value, given what follows
 * the scheme's name ("Basic"): spaces, standard base64 with its padding,
 * optional trailing whitespace (RFC 9110 11.4, RFC 7617). Into out with a
 * NUL; the decoded length, or -1 when it is not base64, does not fit or
 * holds a control character (RFC 7617 2: none in user-id or password). */
int tp_basic_decode(const char *in, char *out, size_t cap);
/* The value of one base64 digit, of the standard alphabet or (url) of
 * base64url's (RFC 4648 4 and 5); -1 if it is none. */
int tp_b64_digit(char c, bool url);
/* Why a private key file is too open to use, or NULL: other users may
 * read it (as PostgreSQL rules: 0600, or 0640 when owned by root). */
const char *tp_key_file_exposed(const char *path);
/* Open a secret file of the data directory (a KEK, vault.key, a signing or
 * decryption key) to read: not through a symbolic link, a regular file
 * owned by this user that no one else may write (else refused: logged
 * secret_file_unsafe, errno EPERM; in a directory others can write, a key
 * planted there was used to seal every card). One others may only read is
 * made 0600 (logged secret_file_tightened). -1 with errno ENOENT: none. */
int tp_secret_open(const char *path);
/* tp_secret_open as a stdio stream ("r"); NULL and errno as above. */
FILE *tp_secret_fopen(const char *path);

#endif

/* tp_pack: jansson trees from a format string, like json_pack, for the hot
 * path. json_pack reads its format through a scanner that copies a token
 * record per character and validates every key with the general UTF-8
 * decoder; on the create+confirm path that was about a tenth of the daemon's
 * CPU (four ~40-key objects per payment). tp_pack reads the format in one
 * pass and builds the same tree.
 *
 * The format language is jansson's (https://jansson.readthedocs.io, "Building
 * values"): s s? s* s# s% and + concatenation, n b i I f o o? o* O O? O*,
 * {...} and [...], with whitespace, ':' and ',' ignored. Semantics match
 * json_pack: NULL for a plain s/o/O is an error, an error returns NULL and
 * still releases every reference an 'o' handed over, invalid UTF-8 in a key
 * or string is an error. */
#ifndef TP_JPACK_H
#define TP_JPACK_H
#include <jansson.h>
#include <stdarg.h>

json_t *tp_pack(const char *fmt, ...);
json_t *tp_vpack(const char *fmt, va_list ap);
/* The same, but a string that is not UTF-8 is scrubbed rather than failing
 * the whole value (a log line kept none of its fields for one bad byte). */
json_t *tp_vpack_scrub(const char *fmt, va_list ap);
#endif

/* A JSON reader for the objects Turnpike reads back from its store.
 *
 * tp_json_loadb(buf, len) gives the tree json_loadb(buf, len, 0, NULL)
 * gives, and refuses what it refuses: the top level is an object or an
 * array, nothing but whitespace follows it, strings are valid UTF-8 without
 * \u0000 and with paired surrogates, integers fit json_int_t, reals are
 * finite, nesting is at most 2048 deep. Duplicate keys: the last value wins,
 * in the first key's place, as in jansson. It is faster because it reads
 * the buffer directly: a run of plain characters is checked and copied in
 * one step, where jansson reads through a character stream and a growing
 * buffer one byte at a time. tests/fuzz/fuzz_jparse.c compares the two on
 * arbitrary input. */
#ifndef TP_JPARSE_H
#define TP_JPARSE_H
#include <jansson.h>
#include <stddef.h>

json_t *tp_json_loadb(const char *buf, size_t len);
/* The same for a NUL-terminated string. */
json_t *tp_json_loads(const char *s);
#endif

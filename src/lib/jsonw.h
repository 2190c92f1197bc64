/* Fast compact JSON serialisation of jansson trees (hot path). */
#ifndef TP_JSONW_H
#define TP_JSONW_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Same bytes as json_dumps(v, JSON_COMPACT) for an object or array, in
 * insertion order; malloc'ed and NUL-terminated, length in *len_out if not
 * NULL. NULL on allocation failure, past 512 levels of nesting, or when v is
 * not an object or array. */
char *tp_json_dump(const json_t *v, size_t *len_out);

/* JSON built by hand on the hot path, without a jansson tree: append raw
 * text (already JSON), a string (escaped as json_dumps does; NULL writes
 * null) or an integer, then take the NUL-terminated result (malloc'ed; NULL
 * if an allocation failed). Start from struct tp_jbuf b = {0}. */
struct tp_jbuf {
  char *p;
  size_t len, cap;
  bool failed;
};
void tp_jbuf_raw(struct tp_jbuf *b, const char *s, size_t n);
void tp_jbuf_str(struct tp_jbuf *b, const char *s);
void tp_jbuf_int(struct tp_jbuf *b, int64_t v);
char *tp_jbuf_finish(struct tp_jbuf *b, size_t *len_out);
/* A string literal (its length from sizeof, never counted by hand), and a
 * member: a literal that ends in the key and its colon, then the value. */
#define TP_JBUF_LIT(b, lit) tp_jbuf_raw((b), "" lit, sizeof(lit) - 1)
#define TP_JBUF_STR(b, lit, v) (TP_JBUF_LIT(b, lit), tp_jbuf_str((b), (v)))
#define TP_JBUF_INT(b, lit, v) (TP_JBUF_LIT(b, lit), tp_jbuf_int((b), (v)))
#endif

/* Fast compact JSON serialisation of jansson trees (hot path). */
#ifndef TP_JSONW_H
#define TP_JSONW_H
#include <jansson.h>
#include <stddef.h>

/* Same bytes as json_dumps(v, JSON_COMPACT) for an object or array, in
 * insertion order; malloc'ed and NUL-terminated, length in *len_out if not
 * NULL. NULL on allocation failure, past 512 levels of nesting, or when v is
 * not an object or array. */
char *tp_json_dump(const json_t *v, size_t *len_out);
#endif

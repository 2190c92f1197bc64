/* Objects at rest are compressed: zstd frames with a dictionary trained on
 * Turnpike's own Stripe objects (src/store/zdict/, scripts/train_zdict.py).
 * A 1-2 KB object shrinks five to ten times, so a payment writes a fraction
 * of the pages it would (WAL, checkpoint, disk). Stored as a BLOB; a TEXT
 * value is plain JSON (rows written before, or with [store] compress = off),
 * so readers accept both. See docs/architecture.md, "Compressed objects". */
#ifndef TP_ZJSON_H
#define TP_ZJSON_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Whether new rows are compressed ([store] compress, default on); read once. */
bool tp_zjson_enabled(void);
/* Compress len bytes of JSON with the newest dictionary: a malloc'ed zstd
 * frame (its size in *out_len), or NULL when compression is off or fails
 * (the caller then stores the text). */
uint8_t *tp_zjson_pack(const char *json, size_t len, size_t *out_len);
/* len bytes stored, not compressed, in a frame that reads back like the
 * others (the newest dictionary's id, its content size, one raw block):
 * the text starts TP_ZJSON_RAW_HEAD bytes in, so it can be patched in
 * place (the writer numbers events this way, src/store/cs.c). NULL when
 * compression is off or len is past TP_ZJSON_RAW_MAX. */
uint8_t *tp_zjson_raw(const char *json, size_t len, size_t *out_len);
#define TP_ZJSON_RAW_HEAD 16u
#define TP_ZJSON_RAW_MAX ((size_t)64 << 10)
/* Whether frame (len bytes) starts with a frame tp_zjson_raw made. */
bool tp_zjson_is_raw(const void *frame, size_t len);
/* A stored frame back to its JSON: malloc'ed, NUL-terminated, length in
 * *out_len if not NULL. NULL if the frame is damaged, names an unknown
 * dictionary, or would exceed TP_ZJSON_MAX bytes. */
char *tp_zjson_unpack(const void *frame, size_t len, size_t *out_len);
#define TP_ZJSON_MAX (16u << 20)
#endif

/* Compressed JSON at rest (see zjson.h). */
#include "store/zjson.h"
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

extern const uint8_t *const tp_zdicts[];
extern const size_t tp_zdict_sizes[];
extern const size_t tp_zdicts_count;

#define ZLEVEL 1 /* fastest: with the dictionary it already compresses ~9x */

static struct {
  pthread_once_t once;
  bool enabled;
  ZSTD_CDict *cdict;          /* newest dictionary, for writing */
  ZSTD_DDict **ddicts;        /* every dictionary, for reading */
  unsigned *ids;
  pthread_key_t cctx_key, dctx_key;
} Z = {.once = PTHREAD_ONCE_INIT};

static void free_cctx(void *p) { ZSTD_freeCCtx(p); }
static void free_dctx(void *p) { ZSTD_freeDCtx(p); }

static void init(void)
{
  /* A flag like every other ("maybe" is not one: counted, and serve stops). */
  Z.enabled = tp_config_bool("store", "compress", true);
  if (pthread_key_create(&Z.cctx_key, free_cctx) != 0 || pthread_key_create(&Z.dctx_key, free_dctx) != 0)
    abort();
  Z.ddicts = calloc(tp_zdicts_count ? tp_zdicts_count : 1, sizeof *Z.ddicts);
  Z.ids = calloc(tp_zdicts_count ? tp_zdicts_count : 1, sizeof *Z.ids);
  if (!Z.ddicts || !Z.ids)
    abort();
  for (size_t i = 0; i < tp_zdicts_count; i++) {
    Z.ddicts[i] = ZSTD_createDDict(tp_zdicts[i], tp_zdict_sizes[i]);
    Z.ids[i] = ZSTD_getDictID_fromDict(tp_zdicts[i], tp_zdict_sizes[i]);
    if (!Z.ddicts[i] || Z.ids[i] == 0)
      abort(); /* a broken embedded dictionary is a build error */
  }
  if (tp_zdicts_count) {
    size_t n = tp_zdicts_count - 1;
    Z.cdict = ZSTD_createCDict(tp_zdicts[n], tp_zdict_sizes[n], ZLEVEL);
    if (!Z.cdict)
      abort();
  } else {
    Z.enabled = false;
  }
}

static void *new_cctx(void) { return ZSTD_createCCtx(); }
static void *new_dctx(void) { return ZSTD_createDCtx(); }

/* This thread's (de)compression context, made on first use and freed when
 * the thread exits (the key's destructor); NULL if it cannot be made. */
static void *thread_ctx(pthread_key_t key, void *(*make)(void))
{
  void *c = pthread_getspecific(key);
  if (!c && (c = make()) != NULL)
    pthread_setspecific(key, c);
  return c;
}

bool tp_zjson_enabled(void)
{
  pthread_once(&Z.once, init);
  return Z.enabled;
}

uint8_t *tp_zjson_pack(const char *json, size_t len, size_t *out_len)
{
  if (!tp_zjson_enabled())
    return NULL;
  ZSTD_CCtx *c = thread_ctx(Z.cctx_key, new_cctx);
  if (!c)
    return NULL;
  size_t cap = ZSTD_compressBound(len);
  uint8_t *out = malloc(cap);
  if (!out)
    return NULL;
  size_t n = ZSTD_compress_usingCDict(c, out, cap, json, len, Z.cdict);
  if (ZSTD_isError(n)) {
    free(out);
    return NULL;
  }
  *out_len = n;
  return out;
}

/* RFC 8878 §3.1.1: magic, a header descriptor (4-byte content size, single
 * segment, 4-byte dictionary id, no checksum), the dictionary id, the size,
 * then one block: last, raw, len bytes. */
#define RAW_FHD 0xA3u

static void le32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

uint8_t *tp_zjson_raw(const char *json, size_t len, size_t *out_len)
{
  if (!tp_zjson_enabled() || len > TP_ZJSON_RAW_MAX)
    return NULL;
  uint8_t *out = malloc(TP_ZJSON_RAW_HEAD + len);
  if (!out)
    return NULL;
  le32(out, ZSTD_MAGICNUMBER);
  out[4] = RAW_FHD;
  le32(out + 5, Z.ids[tp_zdicts_count - 1]);
  le32(out + 9, (uint32_t)len);
  uint32_t bh = 1u | ((uint32_t)len << 3); /* last block, type 0 (raw) */
  out[13] = (uint8_t)bh;
  out[14] = (uint8_t)(bh >> 8);
  out[15] = (uint8_t)(bh >> 16);
  memcpy(out + TP_ZJSON_RAW_HEAD, json, len);
  *out_len = TP_ZJSON_RAW_HEAD + len;
  return out;
}

bool tp_zjson_is_raw(const void *frame, size_t len)
{
  const uint8_t *f = frame;
  if (len < TP_ZJSON_RAW_HEAD || f[4] != RAW_FHD || (f[13] & 7u) != 1u)
    return false;
  uint32_t magic = (uint32_t)f[0] | (uint32_t)f[1] << 8 | (uint32_t)f[2] << 16 | (uint32_t)f[3] << 24;
  uint32_t size = (uint32_t)f[9] | (uint32_t)f[10] << 8 | (uint32_t)f[11] << 16 | (uint32_t)f[12] << 24;
  uint32_t bsize = ((uint32_t)f[13] | (uint32_t)f[14] << 8 | (uint32_t)f[15] << 16) >> 3;
  return magic == ZSTD_MAGICNUMBER && size == bsize && size <= len - TP_ZJSON_RAW_HEAD;
}

char *tp_zjson_unpack(const void *frame, size_t len, size_t *out_len)
{
  pthread_once(&Z.once, init);
  /* One frame, or several in a row (an event stored around its object's
   * frame, see tp_cs_put_event_around): the sizes of all, each frame
   * written with the same dictionary. */
  unsigned long long size = 0;
  unsigned id = ZSTD_getDictID_fromFrame(frame, len);
  for (size_t off = 0; off < len;) {
    const uint8_t *f = (const uint8_t *)frame + off;
    unsigned long long fs = ZSTD_getFrameContentSize(f, len - off);
    size_t fl = ZSTD_findFrameCompressedSize(f, len - off);
    if (fs == ZSTD_CONTENTSIZE_UNKNOWN || fs == ZSTD_CONTENTSIZE_ERROR || ZSTD_isError(fl) || fl == 0 ||
        ZSTD_getDictID_fromFrame(f, len - off) != id)
      return NULL;
    size += fs;
    if (size > TP_ZJSON_MAX)
      return NULL;
    off += fl;
  }
  const ZSTD_DDict *dd = NULL;
  for (size_t i = 0; i < tp_zdicts_count; i++)
    if (Z.ids[i] == id)
      dd = Z.ddicts[i];
  if (!dd)
    return NULL;
  ZSTD_DCtx *d = thread_ctx(Z.dctx_key, new_dctx);
  if (!d)
    return NULL;
  char *out = malloc((size_t)size + 1);
  if (!out)
    return NULL;
  size_t n = ZSTD_decompress_usingDDict(d, out, (size_t)size, frame, len, dd);
  if (ZSTD_isError(n) || n != size) {
    free(out);
    return NULL;
  }
  out[n] = '\0';
  if (out_len)
    *out_len = n;
  return out;
}

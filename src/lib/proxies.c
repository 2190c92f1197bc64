/* Trusted reverse proxies and the client's address; see proxies.h. */
#include "proxies.h"
#include "config.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

static struct tp_cidr proxies_[TP_PROXIES_MAX];
static size_t nproxies_;
static bool rfc7239_; /* [server] forwarded_header = Forwarded */

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* One address (no prefix) into family/bytes; IPv4-mapped IPv6 becomes
 * IPv4. len bytes of s, which need not be terminated. */
static bool parse_addr(const char *s, size_t len, int *family, uint8_t addr[16])
{
  char buf[INET6_ADDRSTRLEN + 1];
  if (len == 0 || len >= sizeof buf)
    return false;
  memcpy(buf, s, len);
  buf[len] = '\0';
  if (inet_pton(AF_INET, buf, addr) == 1) {
    *family = AF_INET;
    return true;
  }
  if (inet_pton(AF_INET6, buf, addr) != 1)
    return false;
  if (memcmp(addr, v4_mapped_prefix, sizeof v4_mapped_prefix) == 0) {
    memmove(addr, addr + 12, 4);
    *family = AF_INET;
  } else {
    *family = AF_INET6;
  }
  return true;
}

static bool parse_cidr(const char *s, size_t len, struct tp_cidr *c)
{
  const char *slash = memchr(s, '/', len);
  size_t alen = slash ? (size_t)(slash - s) : len;
  memset(c, 0, sizeof *c);
  if (!parse_addr(s, alen, &c->family, c->addr))
    return false;
  unsigned max = c->family == AF_INET ? 32 : 128;
  c->bits = max;
  if (slash) {
    const char *d = slash + 1, *end = s + len;
    if (d == end || end - d > 3)
      return false;
    unsigned v = 0;
    for (; d < end; d++) {
      if (*d < '0' || *d > '9')
        return false;
      v = v * 10 + (unsigned)(*d - '0');
    }
    /* A mapped prefix counts its IPv4 part only. */
    bool mapped = c->family == AF_INET && memchr(s, ':', alen) != NULL;
    if (mapped) {
      if (v < 96)
        return false;
      v -= 96;
    }
    if (v > max)
      return false;
    c->bits = v;
  }
  return true;
}

static bool cidr_has(const struct tp_cidr *c, int family, const uint8_t addr[16])
{
  if (c->family != family)
    return false;
  unsigned full = c->bits / 8, rest = c->bits % 8;
  if (memcmp(c->addr, addr, full) != 0)
    return false;
  if (rest == 0)
    return true;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (c->addr[full] & mask) == (addr[full] & mask);
}

static bool list_has(const struct tp_cidr *list, size_t n, int family, const uint8_t addr[16])
{
  for (size_t i = 0; i < n; i++)
    if (cidr_has(&list[i], family, addr))
      return true;
  return false;
}

static bool is_sep(char ch)
{
  return ch == ',' || ch == ' ' || ch == '\t';
}

int tp_cidr_list_parse(const char *text, struct tp_cidr *out, size_t cap, char *bad, size_t badcap)
{
  size_t n = 0;
  const char *p = text ? text : "";
  for (;;) {
    while (*p && is_sep(*p))
      p++;
    if (!*p)
      return (int)n;
    const char *start = p;
    while (*p && !is_sep(*p))
      p++;
    size_t len = (size_t)(p - start);
    if (n == cap || !parse_cidr(start, len, &out[n])) {
      if (bad && badcap)
        snprintf(bad, badcap, "%.*s", (int)(len > 64 ? 64 : len), start);
      return -1;
    }
    n++;
  }
}

bool tp_cidr_list_has(const struct tp_cidr *list, size_t n, const char *addr)
{
  int family;
  uint8_t bytes[16];
  return addr && parse_addr(addr, strlen(addr), &family, bytes) && list_has(list, n, family, bytes);
}

/* One X-Forwarded-For entry: an address, optionally "[v6]", "[v6]:port"
 * or "v4:port" (some proxies add the port). */
static bool parse_hop(const char *s, size_t len, int *family, uint8_t addr[16])
{
  while (len && (*s == ' ' || *s == '\t'))
    s++, len--;
  while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
    len--;
  if (len && *s == '[') {
    const char *close = memchr(s, ']', len);
    if (!close)
      return false;
    size_t after = len - (size_t)(close - s) - 1;
    if (after && close[1] != ':')
      return false;
    return parse_addr(s + 1, (size_t)(close - s - 1), family, addr);
  }
  const char *colon = memchr(s, ':', len);
  if (colon && !memchr(colon + 1, ':', len - (size_t)(colon - s) - 1) && memchr(s, '.', (size_t)(colon - s)))
    len = (size_t)(colon - s); /* v4:port */
  return parse_addr(s, len, family, addr);
}

static void addr_text(int family, const uint8_t addr[16], char *out, size_t cap)
{
  char buf[INET6_ADDRSTRLEN];
  if (!inet_ntop(family, addr, buf, sizeof buf))
    buf[0] = '\0';
  tp_scopy(out, cap, buf[0] ? buf : "?");
}

bool tp_client_addr_of(const struct tp_cidr *list, size_t n, const char *peer, const char *xff, char *out,
                       size_t cap)
{
  int family;
  uint8_t addr[16];
  bool known = true;
  if (!peer || !parse_addr(peer, strlen(peer), &family, addr)) {
    tp_scopy(out, cap, peer ? peer : "?");
    return false;
  }
  /* The client so far: the peer, then each hop a trusted one vouched for. */
  if (n > 0 && xff && *xff && list_has(list, n, family, addr)) {
    const char *end = xff + strlen(xff);
    for (int hops = 0; end > xff && hops < TP_XFF_MAX_HOPS; hops++) {
      const char *comma = end;
      while (comma > xff && comma[-1] != ',')
        comma--;
      int f;
      uint8_t a[16];
      bool blank = true;
      for (const char *q = comma; q < end; q++)
        if (*q != ' ' && *q != '\t')
          blank = false;
      if (!blank) {
        if (!parse_hop(comma, (size_t)(end - comma), &f, a)) {
          known = false; /* not an address: believe no further */
          break;
        }
        family = f;
        memcpy(addr, a, sizeof addr);
        if (!list_has(list, n, family, addr))
          break; /* the first hop no proxy of ours is: the client */
      }
      end = comma > xff ? comma - 1 : xff;
    }
  }
  addr_text(family, addr, out, cap);
  return known;
}

/* ---- RFC 7239 Forwarded --------------------------------------------------- */
struct fwd_out {
  char *s;
  size_t len;
};

/* Append one value (len bytes) as a list entry; tp_forwarded_for sized the
 * buffer for the worst case, so it always fits. */
static void fwd_put(struct fwd_out *o, const char *v, size_t len)
{
  if (o->len)
    o->s[o->len++] = ',';
  memcpy(o->s + o->len, v, len);
  o->len += len;
  o->s[o->len] = '\0';
}

static bool tchar(char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         /* RFC 7230's token characters, and ':' '[' ']' for the unquoted
          * "[v6]:port" values some proxies write */
         (c != '\0' && strchr("!#$%&'*+-.^_`|~:[]", c) != NULL);
}

char *tp_forwarded_for(const char *fwd)
{
  /* Every input byte ends at most one element, and an element becomes at
   * most its value or "unknown" (7 bytes) and a comma: 8 bytes a byte. */
  size_t in = fwd ? strlen(fwd) : 0;
  struct fwd_out o = {malloc(8 * in + 8), 0};
  if (!o.s)
    return NULL;
  o.s[0] = '\0';
  const char *p = fwd ? fwd : "";
  while (*p) {
    /* One forwarded-element: pairs separated by ';', up to a ',' outside
     * quotes. */
    char val[64];
    size_t vlen = 0;
    bool have_for = false, bad = false;
    for (;;) {
      while (*p == ' ' || *p == '\t' || *p == ';')
        p++;
      if (!*p || *p == ',')
        break;
      const char *name = p;
      while (tchar(*p) && *p != '=')
        p++;
      size_t nlen = (size_t)(p - name);
      if (*p != '=' || nlen == 0) {
        bad = true;
        while (*p && *p != ',')
          p++;
        break;
      }
      p++;
      char buf[64];
      size_t blen = 0;
      bool toolong = false;
      if (*p == '"') {
        p++;
        while (*p && *p != '"') {
          if (*p == '\\' && p[1])
            p++;
          if (blen < sizeof buf)
            buf[blen++] = *p;
          else
            toolong = true;
          p++;
        }
        if (*p != '"') {
          bad = true;
          break;
        }
        p++;
      } else {
        while (tchar(*p)) {
          if (blen < sizeof buf)
            buf[blen++] = *p;
          else
            toolong = true;
          p++;
        }
      }
      while (*p == ' ' || *p == '\t')
        p++;
      if (*p && *p != ';' && *p != ',') {
        bad = true;
        while (*p && *p != ',')
          p++;
        break;
      }
      if (nlen == 3 && strncasecmp(name, "for", 3) == 0) {
        if (have_for || toolong || blen == 0)
          bad = true;
        have_for = true;
        memcpy(val, buf, blen);
        vlen = blen;
      }
    }
    /* A value the X-Forwarded-For reader could take apart at commas, or
     * nothing usable, stands for an unknown hop. */
    if (bad || !have_for || memchr(val, ',', vlen) || memchr(val, ' ', vlen))
      fwd_put(&o, "unknown", 7);
    else
      fwd_put(&o, val, vlen);
    if (*p == ',')
      p++;
  }
  return o.s;
}

int tp_proxies_init(void)
{
  const char *h = tp_config_get("server", "forwarded_header");
  if (!h || strcasecmp(h, "x-forwarded-for") == 0) {
    rfc7239_ = false;
  } else if (strcasecmp(h, "forwarded") == 0) {
    rfc7239_ = true;
  } else {
    tp_log(TP_LOG_ERROR, "config_invalid", "{s:s, s:s, s:s}", "key", "server.forwarded_header", "value", h,
           "error", "expected X-Forwarded-For or Forwarded");
    return -1;
  }
  const char *v = tp_config_get("server", "trusted_proxies");
  char bad[80] = "";
  int n = tp_cidr_list_parse(v, proxies_, TP_PROXIES_MAX, bad, sizeof bad);
  if (n < 0) {
    tp_log(TP_LOG_ERROR, "config_invalid", "{s:s, s:s, s:s}", "key", "server.trusted_proxies", "value", bad,
           "error", "expected IP addresses or prefixes (at most 64), e.g. 10.0.0.0/8, ::1");
    return -1;
  }
  nproxies_ = (size_t)n;
  if (n > 0)
    tp_log(TP_LOG_INFO, "trusted_proxies", "{s:i}", "prefixes", n);
  return 0;
}

bool tp_proxies_configured(void)
{
  return nproxies_ > 0;
}

const char *tp_proxies_header(void)
{
  return rfc7239_ ? "Forwarded" : "X-Forwarded-For";
}

bool tp_proxies_rfc7239(void)
{
  return rfc7239_;
}

bool tp_client_addr(const char *peer, const char *xff, char *out, size_t cap)
{
  return tp_client_addr_of(proxies_, nproxies_, peer, xff, out, cap);
}

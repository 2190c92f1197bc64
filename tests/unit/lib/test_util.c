/* Ids, randomness, hashes and constant-time comparison: the helpers every
 * other module trusts, checked against published vectors where they exist. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <cmocka.h>

#include "util.h"
#include "cli.h"

#include <arpa/inet.h>

#define B62 "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

static void test_id_has_prefix_and_24_base62_chars(void **state)
{
  (void)state;
  static const char *const prefixes[] = {"pi", "cus", "evt", "acct", "x"};
  for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
    char id[TP_ID_MAX];
    memset(id, 'Z', sizeof id); /* so a missing terminator shows up */
    tp_id_new(id, prefixes[i]);
    size_t p = strlen(prefixes[i]);
    assert_memory_equal(id, prefixes[i], p);
    assert_int_equal(id[p], '_');
    assert_int_equal(strlen(id), p + 1 + 24);
    assert_int_equal(strspn(id + p + 1, B62), 24);
  }
}

static void test_ids_strictly_increase_in_one_thread(void **state)
{
  (void)state;
  enum { N = 100000 };
  char prev[TP_ID_MAX], cur[TP_ID_MAX];
  tp_id_new(prev, "pi");
  for (int i = 0; i < N; i++) {
    tp_id_new(cur, "pi");
    if (strcmp(prev, cur) >= 0)
      fail_msg("id %d not increasing: %s then %s", i, prev, cur);
    memcpy(prev, cur, sizeof cur);
  }
}

/* tp_id_ms reads back the time an id carries; anything else is -1. */
static void test_id_ms_reads_the_time_back(void **state)
{
  (void)state;
  struct timespec a, b;
  char id[TP_ID_MAX];
  clock_gettime(CLOCK_REALTIME, &a);
  tp_id_new(id, "evt");
  clock_gettime(CLOCK_REALTIME, &b);
  int64_t ms = tp_id_ms(id);
  assert_true(ms >= (int64_t)a.tv_sec * 1000 + a.tv_nsec / 1000000);
  assert_true(ms <= (int64_t)b.tv_sec * 1000 + b.tv_nsec / 1000000);
  assert_int_equal(tp_id_ms(NULL), -1);
  assert_int_equal(tp_id_ms("evt"), -1);
  assert_int_equal(tp_id_ms("evt_short"), -1);
  assert_int_equal(tp_id_ms("evt_0Vcs-bmG000UdmAEb52gRbaI"), -1);
}

/* Seeded with a time ahead of the clock (the clock stepped back since the
 * newest stored id), new ids sort above that time and keep increasing.
 * Run last: the ids of this process stay ahead of the clock after it. */
static void test_id_seed_keeps_ids_above_a_stored_time(void **state)
{
  (void)state;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t stored = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + 3600 * 1000;
  char floor_stored[TP_ID_MAX], prev[TP_ID_MAX], cur[TP_ID_MAX];
  tp_id_floor(floor_stored, "evt", stored + 1);
  tp_id_seed(stored);
  tp_id_new(prev, "evt");
  assert_true(strcmp(prev, floor_stored) >= 0);
  assert_true(tp_id_ms(prev) > stored);
  assert_true(tp_id_ms(prev) < stored + 1000);
  for (int i = 0; i < 300000; i++) { /* past one millisecond's sequence */
    tp_id_new(cur, "evt");
    if (strcmp(prev, cur) >= 0)
      fail_msg("id %d not increasing after the seed: %s then %s", i, prev, cur);
    memcpy(prev, cur, sizeof cur);
  }
  /* A seed below what was already made changes nothing. */
  tp_id_seed(stored - 60000);
  tp_id_new(cur, "evt");
  assert_true(strcmp(prev, cur) < 0);
}

/* The floor of a time sorts between the ids made before it and after it. */
static void test_id_floor_splits_ids_by_time(void **state)
{
  (void)state;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t before_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  char old[TP_ID_MAX], floor_now[TP_ID_MAX], floor_past[TP_ID_MAX], floor_future[TP_ID_MAX];
  tp_id_new(old, "evt");
  tp_id_floor(floor_now, "evt", before_ms);
  tp_id_floor(floor_past, "evt", before_ms - 1);
  tp_id_floor(floor_future, "evt", before_ms + 60000);
  assert_int_equal(strlen(floor_now), 4 + 8);
  assert_memory_equal(floor_now, old, 4); /* "evt_" */
  assert_true(strcmp(floor_past, old) < 0);
  assert_true(strcmp(floor_now, old) <= 0);
  assert_true(strcmp(floor_future, old) > 0);
  /* 0 and a negative time are the lowest floor, below every id. */
  char zero[TP_ID_MAX], neg[TP_ID_MAX];
  tp_id_floor(zero, "evt", 0);
  tp_id_floor(neg, "evt", -5);
  assert_string_equal(zero, "evt_00000000");
  assert_string_equal(neg, zero);
}

enum { THREADS = 4, PER_THREAD = 20000 };

struct id_batch {
  char (*ids)[TP_ID_MAX];
};

static void *make_ids(void *arg)
{
  struct id_batch *b = arg;
  for (int i = 0; i < PER_THREAD; i++)
    tp_id_new(b->ids[i], "ch");
  return NULL;
}

static int cmp_id(const void *a, const void *b)
{
  return strcmp(a, b);
}

static void test_ids_unique_across_threads(void **state)
{
  (void)state;
  char(*all)[TP_ID_MAX] = calloc((size_t)THREADS * PER_THREAD, TP_ID_MAX);
  assert_non_null(all);
  pthread_t th[THREADS];
  struct id_batch b[THREADS];
  for (int t = 0; t < THREADS; t++) {
    b[t].ids = all + (size_t)t * PER_THREAD;
    assert_int_equal(pthread_create(&th[t], NULL, make_ids, &b[t]), 0);
  }
  for (int t = 0; t < THREADS; t++)
    pthread_join(th[t], NULL);
  /* Each thread's own ids must still be in order. */
  for (int t = 0; t < THREADS; t++)
    for (int i = 1; i < PER_THREAD; i++)
      assert_true(strcmp(b[t].ids[i - 1], b[t].ids[i]) < 0);
  qsort(all, (size_t)THREADS * PER_THREAD, TP_ID_MAX, cmp_id);
  for (size_t i = 1; i < (size_t)THREADS * PER_THREAD; i++)
    if (strcmp(all[i - 1], all[i]) == 0)
      fail_msg("duplicate id %s", all[i]);
  free(all);
}

static void test_random_b62_uses_only_base62_and_all_of_it(void **state)
{
  (void)state;
  char buf[4097];
  int seen[256] = {0};
  tp_random_b62(buf, 4096);
  assert_int_equal(strlen(buf), 4096);
  assert_int_equal(strspn(buf, B62), 4096);
  for (size_t i = 0; i < 4096; i++)
    seen[(unsigned char)buf[i]]++;
  /* 4096 draws over 62 symbols: each expected ~66 times; missing one means a
   * broken mapping, not bad luck (p < 1e-26). */
  for (const char *c = B62; *c; c++)
    assert_true(seen[(unsigned char)*c] > 0);
  /* n = 0 yields the empty string. */
  buf[0] = 'x';
  tp_random_b62(buf, 0);
  assert_int_equal(buf[0], '\0');
  /* Two draws differ. */
  char a[33], b[33];
  tp_random_b62(a, 32);
  tp_random_b62(b, 32);
  assert_string_not_equal(a, b);
}

static void test_sha256_matches_fips_vectors(void **state)
{
  (void)state;
  char hex[65];
  tp_sha256_hex("abc", 3, hex);
  assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  tp_sha256_hex("", 0, hex);
  assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  uint8_t raw[32];
  tp_sha256("abc", 3, raw);
  assert_int_equal(raw[0], 0xba);
  assert_int_equal(raw[31], 0xad);
}

static void test_hmac_sha256_matches_rfc4231_case2(void **state)
{
  (void)state;
  char hex[65];
  const char *data = "what do ya want for nothing?";
  tp_hmac_sha256_hex("Jefe", 4, data, strlen(data), hex);
  assert_string_equal(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

static void test_hmac_sha256_matches_rfc4231_case1(void **state)
{
  (void)state;
  uint8_t key[20];
  memset(key, 0x0b, sizeof key);
  char hex[65];
  tp_hmac_sha256_hex(key, sizeof key, "Hi There", 8, hex);
  assert_string_equal(hex, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
}

static void test_hex_encodes_lowercase(void **state)
{
  (void)state;
  const uint8_t in[] = {0x00, 0x0f, 0xa5, 0xff};
  char out[9];
  tp_hex(in, sizeof in, out);
  assert_string_equal(out, "000fa5ff");
}

/* tp_scopy must give exactly what snprintf(dst, cap, "%s", src) gives, for
 * every length around the capacity, and touch nothing past cap. */
static void test_scopy_matches_snprintf(void **state)
{
  (void)state;
  const char *src = "pi_0123456789abcdefghijklmnopqrstuvwxyz";
  size_t srclen = strlen(src);
  for (size_t cap = 1; cap <= srclen + 2; cap++) {
    char want[64], got[64];
    memset(want, 'X', sizeof want);
    memset(got, 'X', sizeof got);
    int w = snprintf(want, cap, "%s", src);
    int g = tp_scopy(got, cap, src);
    assert_int_equal(g, w);
    assert_memory_equal(got, want, sizeof got);
  }
  char one[4] = "abc";
  assert_int_equal(tp_scopy(one, 4, ""), 0);
  assert_string_equal(one, "");
  assert_int_equal(tp_scopy(one, 0, "zz"), 2); /* cap 0: nothing written */
  assert_string_equal(one, "");
}

static void test_token_ok_takes_reference_characters_up_to_max(void **state)
{
  (void)state;
  assert_true(tp_token_ok("", 15));
  assert_true(tp_token_ok("att_0VcsS5vi-fence", 63));
  assert_true(tp_token_ok("AZaz09_-", 8));
  assert_false(tp_token_ok("AZaz09_-x", 8)); /* one over max */
  assert_false(tp_token_ok("a b", 15));
  assert_false(tp_token_ok("a/b", 15));
  assert_false(tp_token_ok("a.b", 15));
  assert_false(tp_token_ok("caf\xc3\xa9", 15)); /* non-ASCII */
  assert_false(tp_token_ok("a%2f", 15));
}

static void test_ct_equal_compares_every_byte(void **state)
{
  (void)state;
  uint8_t a[64], b[64];
  for (int i = 0; i < 64; i++)
    a[i] = b[i] = (uint8_t)(i * 7);
  assert_true(tp_ct_equal(a, b, sizeof a));
  assert_true(tp_ct_equal(a, b, 0));
  for (int i = 0; i < 64; i++) {
    b[i] ^= 0x80;
    assert_false(tp_ct_equal(a, b, sizeof a));
    b[i] ^= 0x80;
  }
  b[63] ^= 1;
  assert_true(tp_ct_equal(a, b, 63)); /* only the first n bytes count */
}

static void test_clocks_are_sane(void **state)
{
  (void)state;
  assert_true(tp_now() > 1700000000); /* after Nov 2023 */
  int64_t a = tp_mono_ns(), b = tp_mono_ns();
  assert_true(b >= a);
  assert_true(tp_mono_ms() >= a / 1000000);
}

static void test_hostport_parses_ipv4_ipv6_and_rejects_the_rest(void **state)
{
  (void)state;
  char h[64];
  uint16_t p = 1;
  assert_int_equal(tp_cli_hostport("127.0.0.1:8420", h, sizeof h, &p), 0);
  assert_string_equal(h, "127.0.0.1");
  assert_int_equal(p, 8420);
  assert_int_equal(tp_cli_hostport("[::1]:0", h, sizeof h, &p), 0);
  assert_string_equal(h, "::1");
  assert_int_equal(p, 0);
  assert_int_equal(tp_cli_hostport("[fe80::1:2]:65535", h, sizeof h, &p), 0);
  assert_string_equal(h, "fe80::1:2");
  assert_int_equal(p, 65535);
  const char *bad[] = {"::1:80", "[::1]", "[::1]80", "[]:80", "host:", ":80", "host:65536", "host:-1", "host:+1",
                       "host:8x", "[::1:80", "a]:80", "noport", "127.0.0.1: 80", "host:80 ", "host:\t80",
                       "host:\n80", "host:0x50", "host:123456"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(tp_cli_hostport(bad[i], h, sizeof h, &p), -1);
  assert_int_equal(tp_cli_hostport("0123456789012345678901234567890123456789:1", h, 16, &p), -1);
  char out[64];
  tp_cli_hostport_fmt(out, sizeof out, "::1", 443);
  assert_string_equal(out, "[::1]:443");
  tp_cli_hostport_fmt(out, sizeof out, "127.0.0.1", 80);
  assert_string_equal(out, "127.0.0.1:80");
  struct sockaddr_storage ss;
  socklen_t len;
  assert_int_equal(tp_cli_sockaddr("::1", 9, &ss, &len), 0);
  assert_int_equal(ss.ss_family, AF_INET6);
  assert_int_equal(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 9);
  assert_int_equal(tp_cli_sockaddr("localhost", 10, &ss, &len), 0);
  assert_int_equal(ss.ss_family, AF_INET);
  assert_int_equal(((struct sockaddr_in *)&ss)->sin_addr.s_addr, htonl(0x7f000001));
  assert_int_equal(tp_cli_sockaddr("example.com", 10, &ss, &len), -1);
}

/* Webhook destinations with [webhooks] private_networks = deny. */
static void test_card_numbers_are_masked_in_echoed_text(void **state)
{
  (void)state;
  static const struct {
    const char *in, *out;
    int runs;
  } cases[] = {
    {"No such PaymentMethod: '4242424242424242'", "No such PaymentMethod: '****************'", 1},
    {"4242 4242 4242 4242", "**** **** **** ****", 1},
    {"x 4242-4242-4242-4242 y", "x ****-****-****-**** y", 1},
    {"371449635398431", "***************", 1},
    {"123456789012", "************", 1},
    {"12345678901", "12345678901", 0},               /* 11 digits: an amount, a date, not a PAN */
    {"Amount must be no more than 99999999", "Amount must be no more than 99999999", 0},
    {"4242  4242 4242 4242", "****  **** **** ****", 1},   /* up to three separators join */
    {"4242.4242.4242.4242", "****.****.****.****", 1},
    {"4242_4242_4242_4242", "****_****_****_****", 1},
    {"/v1/payment_intents/4000+0566+5566+5556", "/v1/payment_intents/****+****+****+****", 1},
    {"4242\t4242\t4242\t4242", "****\t****\t****\t****", 1},
    {"/v1/customers/4242 / 4242 / 4242 / 4242", "/v1/customers/**** / **** / **** / ****", 1},
    {"192.168.100.200", "192.168.100.200", 0},         /* an IPv4 address: 12 digits with dots */
    {"4242    4242    4242    4242", "****    ****    ****    ****", 1}, /* padded groups */
    {"4242:4242:4242:4242", "****:****:****:****", 1},
    {"4242 : 4242 : 4242 : 4242", "**** : **** : **** : ****", 1},
    {"4242         4242 4242 4242", "4242         **** **** ****", 1}, /* nine spaces part it: 4 + 12 */
    {"10.1.2.3:8420 and 127.0.0.1:65535", "10.1.2.3:8420 and 127.0.0.1:65535", 0},
    {"at 192.168.100.200:8420:1234", "at 192.168.100.200:8420:1234", 0},
    {"1234 5678 9012", "**** **** ****", 1},
    {"1234 5678 901", "1234 5678 901", 0},
    {"pi_0VcrW8EC000r6KGQZ81Fjthg", "pi_0VcrW8EC000r6KGQZ81Fjthg", 0},
    {"a 4242424242424242 and 5555555555554444", "a **************** and ****************", 2},
    {"4242424242424242-", "****************-", 1},
    /* as copied from a page or document: no-break, narrow and ideographic spaces, a Unicode dash */
    {"4000\xc2\xa0" "0566\xc2\xa0" "5566\xc2\xa0" "5556", "****\xc2\xa0****\xc2\xa0****\xc2\xa0****", 1},
    {"4000\xe2\x80\xaf" "0566\xe2\x80\xaf" "5566 5556", "****\xe2\x80\xaf****\xe2\x80\xaf**** ****", 1},
    {"4000\xe3\x80\x80" "0566\xe3\x80\x80" "5566\xe3\x80\x80" "5556", "****\xe3\x80\x80****\xe3\x80\x80****\xe3\x80\x80****", 1},
    {"4000\xe2\x80\x93" "0566\xe2\x80\x93" "5566\xe2\x80\x93" "5556", "****\xe2\x80\x93****\xe2\x80\x93****\xe2\x80\x93****", 1},
    {"4000,0566,5566,5556", "****,****,****,****", 1},
    {"4000;0566;5566;5556", "****;****;****;****", 1},
    {"192.168.100.200:8420", "192.168.100.200:8420", 0}, /* an address and its port */
    /* full-width digits (an East Asian input method), one '*' each */
    {"'\xef\xbc\x94\xef\xbc\x92\xef\xbc\x94\xef\xbc\x92 \xef\xbc\x94\xef\xbc\x92\xef\xbc\x94\xef\xbc\x92 "
     "\xef\xbc\x94\xef\xbc\x92\xef\xbc\x94\xef\xbc\x92 \xef\xbc\x94\xef\xbc\x92\xef\xbc\x94\xef\xbc\x92'",
     "'**** **** **** ****'", 1},
    /* mixed with ASCII, and Arabic-Indic */
    {"4242\xef\xbc\x94\xef\xbc\x92" "4242424242x", "******" "******" "****x", 1},
    {"\xd9\xa4\xd9\xa2\xd9\xa4\xd9\xa2\xd9\xa4\xd9\xa2\xd9\xa4\xd9\xa2\xd9\xa4\xd9\xa2\xd9\xa4\xd9\xa2\xd9\xa4\xd9\xa2"
     "\xd9\xa4\xd9\xa2", "****************", 1},
    {"\xef\xbc\x91\xef\xbc\x92\xef\xbc\x93", "\xef\xbc\x91\xef\xbc\x92\xef\xbc\x93", 0}, /* three: not a PAN */
    {"", "", 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", cases[i].in);
    int n = tp_mask_card_numbers(buf);
    if (strcmp(buf, cases[i].out) != 0 || n != cases[i].runs)
      fail_msg("\"%s\": got \"%s\" (%d runs), want \"%s\" (%d)", cases[i].in, buf, n, cases[i].out,
               cases[i].runs);
  }
}

static void test_addresses_public_or_not(void **state)
{
  (void)state;
  static const char *const not_public[] = {
    "127.0.0.1", "127.255.255.254", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "100.127.255.255", "0.0.0.0", "0.1.2.3", "192.0.0.8", "192.0.2.1", "198.18.0.1", "198.19.255.1",
    "198.51.100.7", "203.0.113.9", "224.0.0.1", "239.1.1.1", "240.0.0.1", "255.255.255.255", "192.88.99.1",
    "::", "::1", "[::1]", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1", "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::", "2002:c0a8:0101::1", "fc00::1", "fd12:3456::1", "fe80::1", "febf::1", "fec0::1",
    "ff02::1", "2001:db8::1", "100::1", "2001::1", "2001:1ff::1", NULL};
  static const char *const public_[] = {
    "1.1.1.1", "8.8.8.8", "172.15.255.255", "172.32.0.1", "192.167.1.1", "192.169.0.1", "100.63.255.255",
    "100.128.0.1", "169.253.1.1", "198.17.255.255", "198.20.0.1", "223.255.255.255", "2606:4700::1111",
    "[2a00:1450:4001::200e]", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "2001:200::1", NULL};
  for (int i = 0; not_public[i]; i++) {
    if (tp_addr_text_is_public(not_public[i]) != 0)
      fail_msg("%s counted public", not_public[i]);
  }
  for (int i = 0; public_[i]; i++) {
    if (tp_addr_text_is_public(public_[i]) != 1)
      fail_msg("%s not counted public", public_[i]);
  }
  assert_int_equal(tp_addr_text_is_public("localhost"), -1);
  assert_int_equal(tp_addr_text_is_public("example.com"), -1);
  assert_int_equal(tp_addr_text_is_public("[example]"), -1);
  assert_int_equal(tp_addr_text_is_public(""), -1);
  /* the socket-address form agrees */
  struct sockaddr_in in = {.sin_family = AF_INET};
  in.sin_addr.s_addr = htonl(0x0a000001);
  assert_false(tp_addr_is_public((struct sockaddr *)&in));
  in.sin_addr.s_addr = htonl(0x08080808);
  assert_true(tp_addr_is_public((struct sockaddr *)&in));
  struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
  in6.sin6_addr.s6_addr[15] = 1;
  assert_false(tp_addr_is_public((struct sockaddr *)&in6));
  struct sockaddr un = {.sa_family = AF_UNIX};
  assert_false(tp_addr_is_public(&un));
}

static void test_utf8_lower_folds_unicode_and_keeps_bad_bytes(void **state)
{
  (void)state;
  static const struct {
    const char *in, *out;
  } cases[] = {
      {"Amy RIDER", "amy rider"},
      {"\xc3\x89lodie \xc3\x86R\xc3\x98", "\xc3\xa9lodie \xc3\xa6r\xc3\xb8"}, /* Élodie ÆRØ */
      {"\xc4\xb0", "\xc4\xb0"},               /* İ: kept, its lower case is ASCII */
      {"\xe2\x84\xaa", "\xe2\x84\xaa"},         /* KELVIN SIGN: the same */
      {"\xc8\xba", "\xe2\xb1\xa5"},            /* Ⱥ: two bytes up to three */
      {"\xce\x91\xd0\x96", "\xce\xb1\xd0\xb6"},  /* Greek, Cyrillic */
      {"\xf0\x90\x90\x80", "\xf0\x90\x90\xa8"},  /* Deseret, four bytes */
      {"A\xff\xc3" "B", "a\xff\xc3" "b"},             /* not UTF-8: copied */
      {"\xe2\x82\xac" "5", "\xe2\x82\xac" "5"},        /* no case: unchanged */
      {"", ""},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *got = tp_utf8_lower(cases[i].in);
    assert_string_equal(got, cases[i].out);
    free(got);
  }
  /* the worst growth, every character two bytes up to three */
  char in[301] = {0};
  for (int i = 0; i < 150; i++)
    memcpy(in + 2 * i, "\xc8\xba", 2);
  char *got = tp_utf8_lower(in);
  assert_int_equal(strlen(got), 450);
  free(got);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_id_has_prefix_and_24_base62_chars),
    cmocka_unit_test(test_ids_strictly_increase_in_one_thread),
    cmocka_unit_test(test_ids_unique_across_threads),
    cmocka_unit_test(test_id_floor_splits_ids_by_time),
    cmocka_unit_test(test_random_b62_uses_only_base62_and_all_of_it),
    cmocka_unit_test(test_sha256_matches_fips_vectors),
    cmocka_unit_test(test_hmac_sha256_matches_rfc4231_case2),
    cmocka_unit_test(test_hmac_sha256_matches_rfc4231_case1),
    cmocka_unit_test(test_hex_encodes_lowercase),
    cmocka_unit_test(test_scopy_matches_snprintf),
    cmocka_unit_test(test_token_ok_takes_reference_characters_up_to_max),
    cmocka_unit_test(test_ct_equal_compares_every_byte),
    cmocka_unit_test(test_clocks_are_sane),
    cmocka_unit_test(test_hostport_parses_ipv4_ipv6_and_rejects_the_rest),
    cmocka_unit_test(test_addresses_public_or_not),
    cmocka_unit_test(test_card_numbers_are_masked_in_echoed_text),
    cmocka_unit_test(test_utf8_lower_folds_unicode_and_keeps_bad_bytes),
    cmocka_unit_test(test_id_ms_reads_the_time_back),
    cmocka_unit_test(test_id_seed_keeps_ids_above_a_stored_time), /* last: ids stay ahead of the clock */
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

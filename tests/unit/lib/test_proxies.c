/* Trusted proxies (src/lib/proxies.c): the prefix list and the client
 * address taken from X-Forwarded-For only behind a trusted hop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "proxies.h"

static struct tp_cidr list[TP_PROXIES_MAX];
static size_t nlist;

static void use(const char *text)
{
  int n = tp_cidr_list_parse(text, list, TP_PROXIES_MAX, NULL, 0);
  assert_true(n >= 0);
  nlist = (size_t)n;
}

static void expect_client(const char *peer, const char *xff, const char *want)
{
  char out[64];
  tp_client_addr_of(list, nlist, peer, xff, out, sizeof out);
  if (strcmp(out, want) != 0)
    fail_msg("peer %s, X-Forwarded-For \"%s\": got %s, want %s", peer, xff ? xff : "(none)", out, want);
}

static void test_list_parses_addresses_and_prefixes(void **state)
{
  (void)state;
  char bad[80];
  assert_int_equal(tp_cidr_list_parse("", list, TP_PROXIES_MAX, bad, sizeof bad), 0);
  assert_int_equal(tp_cidr_list_parse(NULL, list, TP_PROXIES_MAX, bad, sizeof bad), 0);
  assert_int_equal(tp_cidr_list_parse(" 10.0.0.0/8, 127.0.0.1 ::1,fd00::/8\t192.168.1.0/24 ", list,
                                      TP_PROXIES_MAX, bad, sizeof bad),
                   5);
  assert_int_equal(list[0].bits, 8);
  assert_int_equal(list[1].bits, 32);
  assert_int_equal(list[2].bits, 128);
  /* An IPv4-mapped prefix is an IPv4 one. */
  assert_int_equal(tp_cidr_list_parse("::ffff:10.1.0.0/112", list, TP_PROXIES_MAX, bad, sizeof bad), 1);
  assert_int_equal(list[0].bits, 16);
  assert_true(tp_cidr_list_has(list, 1, "10.1.200.3"));
  assert_false(tp_cidr_list_has(list, 1, "10.2.0.1"));

  const char *wrong[] = {"10.0.0.0/33", "::1/129", "10.0.0.1/", "10.0.0.1/x", "10.0.0.256", "example.com",
                         "10.0.0.0/8/8", "1.2.3.4/0008", "::ffff:10.0.0.0/64", "-"};
  for (size_t i = 0; i < sizeof wrong / sizeof *wrong; i++) {
    char text[64];
    snprintf(text, sizeof text, "127.0.0.1, %s", wrong[i]);
    if (tp_cidr_list_parse(text, list, TP_PROXIES_MAX, bad, sizeof bad) != -1)
      fail_msg("accepted %s", wrong[i]);
    assert_string_equal(bad, wrong[i]);
  }
  /* More entries than fit. */
  char many[4096] = "";
  for (int i = 0; i <= TP_PROXIES_MAX; i++)
    snprintf(many + strlen(many), sizeof many - strlen(many), "10.0.%d.1 ", i);
  assert_int_equal(tp_cidr_list_parse(many, list, TP_PROXIES_MAX, bad, sizeof bad), -1);
}

static void test_prefix_matching(void **state)
{
  (void)state;
  static const struct {
    const char *list, *addr;
    bool inside;
  } cases[] = {
    {"10.0.0.0/8", "10.255.255.255", true},
    {"10.0.0.0/8", "11.0.0.0", false},
    {"192.168.4.0/22", "192.168.7.255", true},
    {"192.168.4.0/22", "192.168.8.0", false},
    {"192.168.4.0/22", "192.168.3.255", false},
    {"172.16.5.7", "172.16.5.7", true},
    {"172.16.5.7", "172.16.5.8", false},
    {"2001:db8::/32", "2001:db8:ffff::1", true},
    {"2001:db8::/32", "2001:db9::1", false},
    {"::1", "::1", true},
    {"::1", "::2", false},
    /* An IPv4-mapped peer (a dual-stack listener) matches IPv4 entries. */
    {"10.0.0.0/8", "::ffff:10.9.8.7", true},
    {"10.0.0.0/8 ::/0", "not an address", false},
    {"0.0.0.0/0", "203.0.113.9", true},
    {"0.0.0.0/0", "2001:db8::1", false},
    {"::/0", "2001:db8::1", true},
    {"10.0.0.0/8, ::1", "127.0.0.1", false},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    use(cases[i].list);
    if (tp_cidr_list_has(list, nlist, cases[i].addr) != cases[i].inside)
      fail_msg("%s in [%s]: expected %s", cases[i].addr, cases[i].list, cases[i].inside ? "yes" : "no");
  }
}

static void test_client_is_the_peer_unless_a_trusted_proxy_vouches(void **state)
{
  (void)state;
  /* Nothing configured: the header is nobody's word. */
  use("");
  expect_client("203.0.113.7", "198.51.100.1", "203.0.113.7");
  use("10.0.0.0/8, ::1");
  /* An untrusted peer cannot name another address. */
  expect_client("203.0.113.7", "198.51.100.1", "203.0.113.7");
  /* A trusted peer without the header is the client itself. */
  expect_client("10.0.0.2", NULL, "10.0.0.2");
  expect_client("10.0.0.2", "", "10.0.0.2");
  expect_client("10.0.0.2", " , ", "10.0.0.2");
  /* The entry our proxy appended. */
  expect_client("10.0.0.2", "198.51.100.1", "198.51.100.1");
  /* What the client wrote itself is to the left and ignored. */
  expect_client("10.0.0.2", "1.1.1.1, 198.51.100.1", "198.51.100.1");
  expect_client("10.0.0.2", "evil, 1.1.1.1, 198.51.100.1", "198.51.100.1");
  /* A chain of our proxies is walked through. */
  expect_client("10.0.0.2", "1.1.1.1, 198.51.100.1, 10.3.3.3, 10.4.4.4", "198.51.100.1");
  /* All hops trusted: the leftmost. */
  expect_client("10.0.0.2", "10.9.9.9, 10.3.3.3", "10.9.9.9");
  /* Something that is not an address stops the walk at the last hop that
   * could be believed, and says the client was not disclosed. */
  expect_client("10.0.0.2", "198.51.100.1, unknown", "10.0.0.2");
  expect_client("10.0.0.2", "198.51.100.1, garbage, 10.3.3.3", "10.3.3.3");
  char a[64];
  assert_false(tp_client_addr_of(list, nlist, "10.0.0.2", "198.51.100.1, unknown", a, sizeof a));
  assert_true(tp_client_addr_of(list, nlist, "10.0.0.2", "unknown, 198.51.100.1", a, sizeof a));
  assert_true(tp_client_addr_of(list, nlist, "10.0.0.2", NULL, a, sizeof a));
  assert_true(tp_client_addr_of(list, nlist, "203.0.113.7", "unknown", a, sizeof a));
  assert_true(tp_client_addr_of(list, nlist, "10.0.0.2", "10.9.9.9, 10.3.3.3", a, sizeof a));
  /* Ports and brackets as some proxies write them; canonical output. */
  expect_client("10.0.0.2", "198.51.100.1:51234", "198.51.100.1");
  expect_client("10.0.0.2", "[2001:DB8::0:1]:443", "2001:db8::1");
  expect_client("10.0.0.2", "[2001:db8::1]", "2001:db8::1");
  expect_client("10.0.0.2", "2001:db8:0::1", "2001:db8::1");
  expect_client("10.0.0.2", "[2001:db8::1]x", "10.0.0.2");
  expect_client("10.0.0.2", "::ffff:198.51.100.4", "198.51.100.4");
  /* IPv6 proxy, IPv4-mapped peer. */
  expect_client("::1", "198.51.100.1", "198.51.100.1");
  expect_client("::ffff:10.0.0.2", "198.51.100.1", "198.51.100.1");
  /* Several headers joined with commas are one list. */
  expect_client("10.0.0.2", "1.1.1.1,198.51.100.9,10.0.0.3", "198.51.100.9");
  /* A long chain of trusted hops: at most TP_XFF_MAX_HOPS are examined,
   * and the walk stops at the last one of them (a trusted address). */
  char chain[2048] = "198.51.100.1";
  for (int i = 0; i < TP_XFF_MAX_HOPS + 5; i++)
    snprintf(chain + strlen(chain), sizeof chain - strlen(chain), ", 10.0.%d.1", i);
  char out[64];
  tp_client_addr_of(list, nlist, "10.0.0.2", chain, out, sizeof out);
  assert_true(tp_cidr_list_has(list, nlist, out));
  /* A peer that is not an address text is passed through. */
  expect_client("?", "198.51.100.1", "?");
}

static void expect_forwarded(const char *fwd, const char *want)
{
  char *out = tp_forwarded_for(fwd);
  assert_non_null(out);
  if (strcmp(out, want) != 0)
    fail_msg("Forwarded \"%s\": got \"%s\", want \"%s\"", fwd, out, want);
  free(out);
}

static void test_forwarded_header_gives_the_for_values(void **state)
{
  (void)state;
  expect_forwarded("", "");
  expect_forwarded("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60");
  /* RFC 7239 §4's examples */
  expect_forwarded("for=\"_gazonk\"", "_gazonk");
  expect_forwarded("For=\"[2001:db8:cafe::17]:4711\"", "[2001:db8:cafe::17]:4711");
  expect_forwarded("for=192.0.2.43, for=198.51.100.17", "192.0.2.43,198.51.100.17");
  /* parameters in any order and case, spaces around elements */
  expect_forwarded("proto=https;FOR=198.51.100.1 ,  by=10.0.0.1;for=10.0.0.9", "198.51.100.1,10.0.0.9");
  /* quoted-pairs and a comma inside quotes do not split */
  expect_forwarded("for=\"198.51.100.\\1\"", "198.51.100.1");
  expect_forwarded("host=\"a,b\";for=198.51.100.2, for=10.0.0.2", "198.51.100.2,10.0.0.2");
  /* what cannot be read is an unknown hop */
  expect_forwarded("by=10.0.0.1", "unknown");
  expect_forwarded("for=unknown", "unknown");
  expect_forwarded("for=198.51.100.1;for=198.51.100.2", "unknown");
  expect_forwarded("for=\"198.51.100.1", "unknown");
  expect_forwarded("for=198.51.100.1 x, for=10.0.0.2", "unknown,10.0.0.2");
  expect_forwarded("garbage, for=10.0.0.2", "unknown,10.0.0.2");
  expect_forwarded("for=\"a b\"", "unknown");
  /* a long header loses nothing (MHD bounds headers; the list is sized for
   * the worst case: every byte an element read as "unknown") */
  char big[2048] = "";
  for (int i = 0; i < 60; i++)
    snprintf(big + strlen(big), sizeof big - strlen(big), "%sfor=198.51.100.%d", i ? ", " : "", i);
  char *out = tp_forwarded_for(big);
  assert_non_null(out);
  assert_true(strncmp(out, "198.51.100.0,198.51.100.1,", 26) == 0);
  size_t n = strlen(out);
  assert_string_equal(out + n - strlen(",198.51.100.59"), ",198.51.100.59");
  free(out);
  char commas[1001];
  memset(commas, ',', 1000);
  commas[1000] = '\0';
  out = tp_forwarded_for(commas);
  assert_non_null(out);
  assert_int_equal(strlen(out), 1000 * 8 - 1);
  free(out);

  /* and through the walk: a trusted proxy's Forwarded element names the client */
  use("10.0.0.0/8");
  char addr[64];
  char *fl = tp_forwarded_for("for=192.0.2.1, for=\"[2001:db8::5]:4711\";proto=https, for=10.0.0.7");
  tp_client_addr_of(list, nlist, "10.0.0.2", fl, addr, sizeof addr);
  assert_string_equal(addr, "2001:db8::5");
  free(fl);
  fl = tp_forwarded_for("for=192.0.2.1, for=_hidden, for=10.0.0.7");
  tp_client_addr_of(list, nlist, "10.0.0.2", fl, addr, sizeof addr);
  assert_string_equal(addr, "10.0.0.7");
  free(fl);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_list_parses_addresses_and_prefixes),
    cmocka_unit_test(test_prefix_matching),
    cmocka_unit_test(test_client_is_the_peer_unless_a_trusted_proxy_vouches),
    cmocka_unit_test(test_forwarded_header_gives_the_for_values),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

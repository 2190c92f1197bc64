/* The card vault: sealed records open only with the same KEK, merchant and
 * token, any altered byte is detected, and no card number is left readable. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "sec/vault.h"
#include "util.h"

#define PAN "4242424242424242"
#define MERCHANT "acct_1"
#define TOKEN "tok_abc"

static uint8_t kek[32];

static void seal(uint8_t blob[TP_VAULT_MAX_BLOB], size_t *len)
{
  assert_int_equal(tp_vault_seal(kek, MERCHANT, TOKEN, PAN, 12, 2034, blob, len), 0);
  assert_true(*len > 0 && *len <= TP_VAULT_MAX_BLOB);
}

static int setup(void **state)
{
  (void)state;
  tp_random(kek, sizeof kek);
  return 0;
}

static void test_seal_then_open_returns_card(void **state)
{
  (void)state;
  uint8_t blob[TP_VAULT_MAX_BLOB];
  size_t len = 0;
  seal(blob, &len);
  char pan[20] = "";
  int m = 0, y = 0;
  assert_int_equal(tp_vault_open(kek, MERCHANT, TOKEN, blob, len, pan, &m, &y), 0);
  assert_string_equal(pan, PAN);
  assert_int_equal(m, 12);
  assert_int_equal(y, 2034);

  /* 19 digits is the longest PAN and still fits the 20-byte buffer. */
  assert_int_equal(tp_vault_seal(kek, MERCHANT, TOKEN, "6011000990139424123", 1, 2030, blob, &len), 0);
  assert_int_equal(tp_vault_open(kek, MERCHANT, TOKEN, blob, len, pan, &m, &y), 0);
  assert_string_equal(pan, "6011000990139424123");
  assert_int_equal(m, 1);
}

static void test_sealing_twice_gives_different_blobs(void **state)
{
  (void)state;
  uint8_t a[TP_VAULT_MAX_BLOB], b[TP_VAULT_MAX_BLOB];
  size_t la = 0, lb = 0;
  seal(a, &la);
  seal(b, &lb);
  assert_int_equal(la, lb);
  assert_memory_not_equal(a, b, la); /* fresh nonces and data key each time */
}

static void test_any_tampered_byte_fails_open(void **state)
{
  (void)state;
  uint8_t blob[TP_VAULT_MAX_BLOB];
  size_t len = 0;
  seal(blob, &len);
  for (size_t i = 0; i < len; i++) {
    for (int bit = 0; bit < 8; bit += 7) { /* low and high bit of every byte */
      blob[i] ^= (uint8_t)(1u << bit);
      char pan[20] = "";
      int m = 0, y = 0;
      if (tp_vault_open(kek, MERCHANT, TOKEN, blob, len, pan, &m, &y) == 0)
        fail_msg("open succeeded with byte %zu bit %d flipped", i, bit);
      assert_string_equal(pan, ""); /* nothing leaked into the output */
      blob[i] ^= (uint8_t)(1u << bit);
    }
  }
  /* Truncated and extended blobs fail too. */
  char pan[20];
  int m, y;
  assert_int_not_equal(tp_vault_open(kek, MERCHANT, TOKEN, blob, len - 1, pan, &m, &y), 0);
  blob[len] = 0;
  assert_int_not_equal(tp_vault_open(kek, MERCHANT, TOKEN, blob, len + 1, pan, &m, &y), 0);
  /* And the untouched blob still opens. */
  assert_int_equal(tp_vault_open(kek, MERCHANT, TOKEN, blob, len, pan, &m, &y), 0);
}

static void test_other_merchant_or_token_fails_open(void **state)
{
  (void)state;
  uint8_t blob[TP_VAULT_MAX_BLOB];
  size_t len = 0;
  seal(blob, &len);
  char pan[20] = "";
  int m = 0, y = 0;
  assert_int_not_equal(tp_vault_open(kek, "acct_2", TOKEN, blob, len, pan, &m, &y), 0);
  assert_int_not_equal(tp_vault_open(kek, MERCHANT, "tok_abd", blob, len, pan, &m, &y), 0);
  assert_int_not_equal(tp_vault_open(kek, "", "", blob, len, pan, &m, &y), 0);
  assert_string_equal(pan, "");
}

static void test_other_kek_fails_open(void **state)
{
  (void)state;
  uint8_t blob[TP_VAULT_MAX_BLOB];
  size_t len = 0;
  seal(blob, &len);
  uint8_t other[32];
  memcpy(other, kek, 32);
  other[31] ^= 1;
  char pan[20] = "";
  int m = 0, y = 0;
  assert_int_not_equal(tp_vault_open(other, MERCHANT, TOKEN, blob, len, pan, &m, &y), 0);
  assert_string_equal(pan, "");
}

static void test_pan_not_in_blob(void **state)
{
  (void)state;
  uint8_t blob[TP_VAULT_MAX_BLOB];
  size_t len = 0;
  seal(blob, &len);
  assert_null(memmem(blob, len, PAN, strlen(PAN)));
  assert_null(memmem(blob, len, "42424242", 8)); /* nor a sizeable piece of it */
  assert_null(memmem(blob, len, "2034", 4));
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void test_init_creates_0600_key_and_reuses_it(void **state)
{
  (void)state;
  char dir[] = "/tmp/tp_vault_XXXXXX";
  assert_non_null(mkdtemp(dir));
  uint8_t k1[32], k2[32];
  memset(k1, 0, sizeof k1);
  assert_int_equal(tp_vault_init(dir, k1), 0);
  char path[256];
  snprintf(path, sizeof path, "%s/vault.key", dir);
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
  assert_int_equal(sb.st_size, 32);
  uint8_t zero[32] = {0};
  assert_memory_not_equal(k1, zero, 32);

  assert_int_equal(tp_vault_init(dir, k2), 0);
  assert_memory_equal(k1, k2, 32);

  /* A record sealed under the first load opens under the second. */
  uint8_t blob[TP_VAULT_MAX_BLOB];
  size_t len = 0;
  assert_int_equal(tp_vault_seal(k1, MERCHANT, TOKEN, PAN, 3, 2031, blob, &len), 0);
  char pan[20];
  int m, y;
  assert_int_equal(tp_vault_open(k2, MERCHANT, TOKEN, blob, len, pan, &m, &y), 0);
  assert_string_equal(pan, PAN);

  /* A truncated key file is refused rather than padded. */
  assert_int_equal(truncate(path, 16), 0);
  assert_int_not_equal(tp_vault_init(dir, k2), 0);

  assert_int_equal(nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS), 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_seal_then_open_returns_card),
    cmocka_unit_test(test_sealing_twice_gives_different_blobs),
    cmocka_unit_test(test_any_tampered_byte_fails_open),
    cmocka_unit_test(test_other_merchant_or_token_fails_open),
    cmocka_unit_test(test_other_kek_fails_open),
    cmocka_unit_test(test_pan_not_in_blob),
    cmocka_unit_test(test_init_creates_0600_key_and_reuses_it),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}

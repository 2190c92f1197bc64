/* Unit tests: how the REST/JSON connector reads a processor's answer
 * (tp_restjson_interpret), above all a status query's after a lost answer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "connectors/connector.h"

static enum tp_proc_outcome status_answer(enum tp_proc_kind of, const char *body)
{
  struct tp_proc_call c;
  memset(&c, 0, sizeof c);
  c.kind = TP_PROC_STATUS;
  c.status_of = of;
  c.amount = 700;
  memcpy(c.currency, "usd", 4);
  memcpy(c.ref, "ref1", 5);
  tp_restjson_interpret(&c, 200, body, strlen(body));
  return c.outcome;
}

/* A capture's or refund's reference the fence took is kept as a voided
 * authorization; its status, with no operation named, says `voided`: never
 * done (it was read as the capture or refund made: money shown moved that
 * the processor never moved). */
static void test_a_fenced_capture_or_refund_is_not_found(void **state)
{
  (void)state;
  const char *voided = "{\"status\":\"voided\",\"reference\":\"ref1\"}";
  assert_int_equal(status_answer(TP_PROC_CAPTURE, voided), TP_OUT_NOT_FOUND);
  assert_int_equal(status_answer(TP_PROC_REFUND, voided), TP_OUT_NOT_FOUND);
  assert_int_equal(status_answer(TP_PROC_AUTHORIZE, voided), TP_OUT_NOT_FOUND);
  /* named as an authorization: the fence, whatever was asked */
  const char *fence = "{\"status\":\"voided\",\"operation\":\"authorize\",\"reference\":\"ref1\"}";
  assert_int_equal(status_answer(TP_PROC_CAPTURE, fence), TP_OUT_NOT_FOUND);
  assert_int_equal(status_answer(TP_PROC_VOID, fence), TP_OUT_NOT_FOUND);
}

/* Each operation's own word, and only its own. */
static void test_a_status_answer_is_the_word_of_its_operation(void **state)
{
  (void)state;
  assert_int_equal(status_answer(TP_PROC_CAPTURE, "{\"status\":\"captured\",\"amount\":700}"), TP_OUT_APPROVED);
  assert_int_equal(status_answer(TP_PROC_REFUND, "{\"status\":\"succeeded\",\"operation\":\"refund\"}"),
                   TP_OUT_APPROVED);
  assert_int_equal(status_answer(TP_PROC_VOID, "{\"status\":\"voided\",\"operation\":\"void\"}"), TP_OUT_APPROVED);
  assert_int_equal(status_answer(TP_PROC_AUTHORIZE, "{\"status\":\"approved\",\"amount\":700}"), TP_OUT_APPROVED);
  assert_int_equal(status_answer(TP_PROC_AUTHORIZE, "{\"status\":\"captured\",\"amount\":700}"), TP_OUT_APPROVED);
  /* another operation's word is no answer */
  assert_int_equal(status_answer(TP_PROC_CAPTURE, "{\"status\":\"approved\"}"), TP_OUT_ERROR);
  assert_int_equal(status_answer(TP_PROC_REFUND, "{\"status\":\"captured\"}"), TP_OUT_ERROR);
  /* an answer about another operation than the one asked */
  assert_int_equal(status_answer(TP_PROC_CAPTURE, "{\"status\":\"approved\",\"operation\":\"authorize\"}"),
                   TP_OUT_ERROR);
  assert_int_equal(status_answer(TP_PROC_REFUND, "{\"status\":\"captured\",\"operation\":\"capture\"}"),
                   TP_OUT_ERROR);
  /* a void's `voided` with no operation: the void done, or its reference
   * fenced with the hold still live; unknown */
  assert_int_equal(status_answer(TP_PROC_VOID, "{\"status\":\"voided\"}"), TP_OUT_ERROR);
  /* an operation word the contract does not have is no answer (it was
   * read as a void) */
  assert_int_equal(status_answer(TP_PROC_VOID, "{\"status\":\"voided\",\"operation\":\"reversal\"}"),
                   TP_OUT_ERROR);
  assert_int_equal(status_answer(TP_PROC_VOID, "{\"status\":\"voided\",\"operation\":\"Void\"}"), TP_OUT_ERROR);
  /* declines stay declines */
  assert_int_equal(status_answer(TP_PROC_CAPTURE, "{\"status\":\"failed\",\"decline_code\":\"expired_card\"}"),
                   TP_OUT_DECLINED);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_a_fenced_capture_or_refund_is_not_found),
    cmocka_unit_test(test_a_status_answer_is_the_word_of_its_operation),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

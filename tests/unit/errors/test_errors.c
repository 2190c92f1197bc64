/* Tests of the generated error registry (errors/registry.tsv -> tp_errors.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "tp_errors.h"

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void test_registry_has_at_least_250_rows(void **state)
{
	(void)state;
	assert_true(tp_error_count() >= 250);
	assert_int_equal(tp_error_count(), TP_ERR_REGISTRY_SIZE);
	assert_null(tp_error_at(tp_error_count()));
}

static void test_numbers_are_unique_sorted_and_found_by_lookup(void **state)
{
	(void)state;
	int prev = 0;

	for (unsigned i = 0; i < tp_error_count(); i++) {
		const struct tp_error_info *e = tp_error_at(i);

		assert_non_null(e);
		/* strictly ascending implies unique */
		assert_true(e->number > prev);
		prev = e->number;
		assert_ptr_equal(tp_error_info((enum tp_err)e->number), e);
		assert_ptr_equal(tp_error_by_name(e->name), e);
	}
}

static void test_unknown_numbers_and_names_are_null(void **state)
{
	(void)state;
	assert_null(tp_error_info(TP_ERR_OK));
	assert_null(tp_error_info((enum tp_err)1000));
	assert_null(tp_error_info((enum tp_err)-1));
	assert_null(tp_error_info((enum tp_err)999999));
	assert_null(tp_error_by_name("no_such_error"));
	assert_null(tp_error_by_name(""));
	assert_null(tp_error_by_name(NULL));
	assert_null(tp_error_by_decline_code("no_such_decline"));
	assert_null(tp_error_by_decline_code(NULL));
}

static void test_enum_values_match_rows(void **state)
{
	(void)state;
	const struct tp_error_info *e = tp_error_info(TP_ERR_PARAMETER_UNKNOWN);

	assert_non_null(e);
	assert_int_equal(e->number, TP_ERR_PARAMETER_UNKNOWN);
	assert_string_equal(e->name, "parameter_unknown");
	assert_int_equal(e->http_status, 400);
	assert_string_equal(e->type, "invalid_request_error");
	assert_string_equal(e->code, "parameter_unknown");
	assert_null(e->decline_code);

	e = tp_error_info(TP_ERR_BODY_MALFORMED);
	assert_non_null(e);
	assert_null(e->code);
	assert_string_equal(e->message, "Invalid request body");

	e = tp_error_info(TP_ERR_RATE_LIMITED);
	assert_int_equal(e->http_status, 429);
	assert_string_equal(e->type, "invalid_request_error"); /* Stripe's SDKs go by the 429 */
	assert_string_equal(e->code, "rate_limit");
	assert_true(e->retryable);

	e = tp_error_info(TP_ERR_IDEMPOTENCY_MISMATCH);
	assert_string_equal(e->type, "idempotency_error");
	assert_null(e->code);

	e = tp_error_info(TP_ERR_IDEMPOTENCY_KEY_IN_USE);
	assert_int_equal(e->http_status, 409);
	assert_string_equal(e->code, "idempotency_key_in_use");

	e = tp_error_info(TP_ERR_PUBLISHABLE_KEY_FORBIDDEN);
	assert_string_equal(e->code, "secret_key_required");

	e = tp_error_info(TP_ERR_INTERNAL);
	assert_int_equal(e->http_status, 500);
	assert_string_equal(e->type, "api_error");

	e = tp_error_info(TP_ERR_REFUND_AMOUNT_TOO_LARGE);
	assert_string_equal(e->code, "amount_too_large");
}

/* Every name the rest of the tree relies on must exist; this fails to compile otherwise. */
static void test_names_used_by_the_code_exist(void **state)
{
	(void)state;
	static const enum tp_err used[] = {
		TP_ERR_PARAMETER_UNKNOWN, TP_ERR_PARAMETER_MISSING, TP_ERR_PARAMETER_INVALID,
		TP_ERR_PARAMETER_INVALID_INTEGER, TP_ERR_PARAMETER_INVALID_EMPTY,
		TP_ERR_BODY_MALFORMED, TP_ERR_BODY_TOO_LARGE, TP_ERR_UNSUPPORTED_MEDIA_TYPE,
		TP_ERR_AMOUNT_TOO_SMALL, TP_ERR_AMOUNT_TOO_LARGE, TP_ERR_CURRENCY_INVALID,
		TP_ERR_URL_UNKNOWN, TP_ERR_METHOD_NOT_ALLOWED, TP_ERR_RESOURCE_MISSING,
		TP_ERR_AUTH_MISSING, TP_ERR_AUTH_INVALID_KEY, TP_ERR_PUBLISHABLE_KEY_FORBIDDEN,
		TP_ERR_PERMISSION_DENIED, TP_ERR_RATE_LIMITED, TP_ERR_LOCK_TIMEOUT,
		TP_ERR_IDEMPOTENCY_MISMATCH, TP_ERR_IDEMPOTENCY_KEY_IN_USE,
		TP_ERR_IDEMPOTENCY_KEY_TOO_LONG, TP_ERR_PAYMENT_INTENT_UNEXPECTED_STATE,
		TP_ERR_PAYMENT_INTENT_AUTHENTICATION_FAILURE, TP_ERR_PAYMENT_METHOD_UNEXPECTED_STATE,
		TP_ERR_PAYMENT_METHOD_MISSING, TP_ERR_CHARGE_ALREADY_REFUNDED,
		TP_ERR_CHARGE_ALREADY_CAPTURED, TP_ERR_CHARGE_NOT_REFUNDABLE,
		TP_ERR_REFUND_AMOUNT_TOO_LARGE, TP_ERR_CAPTURE_AMOUNT_TOO_LARGE,
		TP_ERR_CUSTOMER_DELETED, TP_ERR_EMAIL_INVALID, TP_ERR_CARD_INCORRECT_NUMBER,
		TP_ERR_CARD_INVALID_EXPIRY_MONTH, TP_ERR_CARD_INVALID_EXPIRY_YEAR,
		TP_ERR_CARD_INVALID_CVC, TP_ERR_CARD_EXPIRED, TP_ERR_DECLINE_GENERIC_DECLINE,
		TP_ERR_DECLINE_INSUFFICIENT_FUNDS, TP_ERR_DECLINE_LOST_CARD,
		TP_ERR_DECLINE_STOLEN_CARD, TP_ERR_DECLINE_FRAUDULENT, TP_ERR_DECLINE_EXPIRED_CARD,
		TP_ERR_DECLINE_INCORRECT_CVC, TP_ERR_DECLINE_PROCESSING_ERROR,
		TP_ERR_DECLINE_DO_NOT_HONOR, TP_ERR_DECLINE_ISSUER_NOT_AVAILABLE,
		TP_ERR_DECLINE_TRY_AGAIN_LATER, TP_ERR_DECLINE_AUTHENTICATION_REQUIRED,
		TP_ERR_ISO_05, TP_ERR_ISO_51, TP_ERR_ISO_96, TP_ERR_PROCESSOR_TIMEOUT,
		TP_ERR_PROCESSOR_UNAVAILABLE, TP_ERR_PROCESSOR_BAD_RESPONSE,
		TP_ERR_NO_PROCESSOR_AVAILABLE, TP_ERR_SCA_CHALLENGE_FAILED, TP_ERR_INTERNAL,
		TP_ERR_STORE_UNAVAILABLE, TP_ERR_OVERLOADED, TP_ERR_SHUTTING_DOWN,
	};

	for (size_t i = 0; i < sizeof(used) / sizeof(used[0]); i++)
		assert_non_null(tp_error_info(used[i]));
}

static void test_every_decline_row_is_a_402_card_error(void **state)
{
	(void)state;
	unsigned declines = 0;

	for (unsigned i = 0; i < tp_error_count(); i++) {
		const struct tp_error_info *e = tp_error_at(i);
		const char *dc;

		if (!starts_with(e->name, "decline_"))
			continue;
		declines++;
		dc = e->name + strlen("decline_");
		assert_string_equal(e->type, "card_error");
		assert_int_equal(e->http_status, 402);
		assert_non_null(e->code);
		assert_non_null(e->decline_code);
		assert_string_equal(e->decline_code, dc);
		assert_ptr_equal(tp_error_by_decline_code(dc), e);
	}
	/* Stripe documents 47 decline codes; all must be present. */
	assert_true(declines >= 47);
}

static void test_insufficient_funds_is_card_declined(void **state)
{
	(void)state;
	const struct tp_error_info *e = tp_error_by_decline_code("insufficient_funds");

	assert_non_null(e);
	assert_int_equal(e->number, TP_ERR_DECLINE_INSUFFICIENT_FUNDS);
	assert_string_equal(e->code, "card_declined");
	assert_string_equal(e->decline_code, "insufficient_funds");
	assert_false(e->retryable);
}

static void test_validation_like_declines_use_their_own_code(void **state)
{
	(void)state;
	const struct tp_error_info *e = tp_error_by_decline_code("expired_card");

	assert_string_equal(e->code, "expired_card");
	assert_string_equal(e->decline_code, "expired_card");
	e = tp_error_by_decline_code("incorrect_cvc");
	assert_string_equal(e->code, "incorrect_cvc");
	e = tp_error_by_decline_code("processing_error");
	assert_string_equal(e->code, "processing_error");
	assert_true(e->retryable);

	/* Our own checks, before any issuer answered, carry no decline_code. */
	e = tp_error_info(TP_ERR_CARD_INCORRECT_NUMBER);
	assert_int_equal(e->http_status, 402);
	assert_string_equal(e->code, "incorrect_number");
	assert_null(e->decline_code);
	e = tp_error_info(TP_ERR_CARD_EXPIRED);
	assert_string_equal(e->code, "expired_card");
}

static void test_iso_codes_map_to_stripe_declines(void **state)
{
	(void)state;
	static const struct {
		const char *field39;
		const char *decline_code;
	} map[] = {
		{ "05", "do_not_honor" }, { "14", "incorrect_number" },
		{ "41", "lost_card" }, { "43", "stolen_card" },
		{ "51", "insufficient_funds" }, { "54", "expired_card" },
		{ "59", "fraudulent" }, { "61", "withdrawal_count_limit_exceeded" },
		{ "91", "issuer_not_available" }, { "96", "processing_error" },
		{ "N7", "incorrect_cvc" }, { "n7", "incorrect_cvc" },
		{ "1A", "authentication_required" },
	};

	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
		const struct tp_error_info *e = tp_error_by_iso_code(map[i].field39);
		const struct tp_error_info *d = tp_error_by_decline_code(map[i].decline_code);

		assert_non_null(e);
		assert_string_equal(e->decline_code, map[i].decline_code);
		/* the client sees the same code and retry advice as the decline row */
		assert_string_equal(e->code, d->code);
		assert_int_equal(e->retryable, d->retryable);
		assert_int_equal(e->http_status, 402);
	}
	assert_int_equal(tp_error_by_iso_code("51")->number, TP_ERR_ISO_51);
	assert_true(tp_error_by_iso_code("91")->retryable);
}

static void test_iso_approvals_and_junk_are_not_errors(void **state)
{
	(void)state;
	assert_null(tp_error_by_iso_code("00"));
	assert_true(tp_iso_code_is_approval("00"));
	assert_true(tp_iso_code_is_approval("10"));
	assert_false(tp_iso_code_is_approval("05"));
	assert_false(tp_iso_code_is_approval("0"));
	assert_false(tp_iso_code_is_approval(NULL));
	assert_null(tp_error_by_iso_code("5"));
	assert_null(tp_error_by_iso_code("051"));
	assert_null(tp_error_by_iso_code("5 "));
	assert_null(tp_error_by_iso_code(""));
	assert_null(tp_error_by_iso_code("ZZ"));
	assert_null(tp_error_by_iso_code(NULL));
}

static void test_every_message_is_nonempty_with_at_most_one_placeholder(void **state)
{
	(void)state;
	for (unsigned i = 0; i < tp_error_count(); i++) {
		const struct tp_error_info *e = tp_error_at(i);
		const char *p = strchr(e->message, '%');

		assert_true(strlen(e->message) > 0);
		assert_non_null(e->type);
		assert_true(e->http_status >= 400 && e->http_status <= 599);
		if (p != NULL) {
			assert_int_equal(p[1], 's');
			assert_null(strchr(p + 1, '%'));
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_registry_has_at_least_250_rows),
		cmocka_unit_test(test_numbers_are_unique_sorted_and_found_by_lookup),
		cmocka_unit_test(test_unknown_numbers_and_names_are_null),
		cmocka_unit_test(test_enum_values_match_rows),
		cmocka_unit_test(test_names_used_by_the_code_exist),
		cmocka_unit_test(test_every_decline_row_is_a_402_card_error),
		cmocka_unit_test(test_insufficient_funds_is_card_declined),
		cmocka_unit_test(test_validation_like_declines_use_their_own_code),
		cmocka_unit_test(test_iso_codes_map_to_stripe_declines),
		cmocka_unit_test(test_iso_approvals_and_junk_are_not_errors),
		cmocka_unit_test(test_every_message_is_nonempty_with_at_most_one_placeholder),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

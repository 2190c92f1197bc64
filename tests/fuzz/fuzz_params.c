/* libFuzzer target: form and JSON parsers, then validation against a spec
 * shaped like PaymentIntent create. Any crash, leak or sanitizer report is a
 * bug; so is an error message that quotes a card number. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/params.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const capture_methods[] = {"automatic", "automatic_async", "manual", NULL};

static const struct tp_pspec card_spec[] = {
    {"number", TP_P_STRING, NULL, NULL},
    {"exp_month", TP_P_INT, NULL, NULL},
    {"exp_year", TP_P_INT, NULL, NULL},
    {"cvc", TP_P_STRING, NULL, NULL},
    {NULL, TP_P_ANY, NULL, NULL},
};

static const struct tp_pspec pmd_spec[] = {
    {"type", TP_P_STRING, NULL, NULL},
    {"card", TP_P_OBJECT, card_spec, NULL},
    {NULL, TP_P_ANY, NULL, NULL},
};

static const struct tp_pspec pi_create[] = {
    {"amount", TP_P_INT, NULL, NULL},
    {"currency", TP_P_STRING, NULL, NULL},
    {"confirm", TP_P_BOOL, NULL, NULL},
    {"capture_method", TP_P_ENUM, NULL, capture_methods},
    {"metadata", TP_P_METADATA, NULL, NULL},
    {"payment_method_data", TP_P_OBJECT, pmd_spec, NULL},
    {"expand", TP_P_STRLIST, NULL, NULL},
    {"created", TP_P_RANGE, NULL, NULL},
    {"description", TP_P_STRING, NULL, NULL},
    {NULL, TP_P_ANY, NULL, NULL},
};

/* Errors must be NUL-terminated and non-empty; a quoted value ("Invalid
 * integer: abc") must be short and must not look like a card number. */
static void check_error(const struct tp_params_error *err) {
  static const char *const echo_prefixes[] = {"Invalid integer: ", "Invalid boolean: ",
                                              "Invalid string: ", "Invalid object: ",
                                              "Invalid array: ", NULL};
  if (!memchr(err->message, '\0', sizeof err->message)) abort();
  if (!memchr(err->param, '\0', sizeof err->param)) abort();
  if (err->message[0] == '\0') abort();
  for (const char *const *p = echo_prefixes; *p; p++) {
    size_t pl = strlen(*p);
    if (strncmp(err->message, *p, pl) != 0) continue;
    const char *v = err->message + pl;
    size_t digits = 0;
    for (const char *c = v; *c; c++) digits += (*c >= '0' && *c <= '9');
    if (strlen(v) > 40 || digits >= 12) abort();
  }
}

static void run(json_t *tree, const struct tp_params_error *perr) {
  struct tp_params_error err;
  if (!tree) {
    check_error(perr);
    return;
  }
  if (!json_is_object(tree)) abort();
  if (tp_params_check(tree, pi_create, &err) == 0) {
    /* Checked trees hold normalized types. */
    json_t *amount = json_object_get(tree, "amount");
    if (amount && !json_is_integer(amount) &&
        !(json_is_string(amount) && json_string_length(amount) == 0) && !json_is_null(amount))
      abort();
    int64_t i;
    bool b;
    const char *s;
    (void)tp_param_int(tree, "amount", &i);
    (void)tp_param_bool(tree, "confirm", &b);
    (void)tp_param_str(tree, "currency", &s);
  } else {
    check_error(&err);
  }
  json_decref(tree);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct tp_params_error err;
  const char *body = (const char *)data;
  run(tp_params_parse_form(body, size, &err), &err);
  run(tp_params_parse_json(body, size, &err), &err);
  return 0;
}

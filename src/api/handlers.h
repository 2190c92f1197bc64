/* Every endpoint handler, one family per file. */
#ifndef TP_HANDLERS_H
#define TP_HANDLERS_H
#include "api/http.h"

/* payment_intents.c */
void tp_h_pi_create(struct tp_req *r);
void tp_h_pi_retrieve(struct tp_req *r);
void tp_h_pi_update(struct tp_req *r);
void tp_h_pi_confirm(struct tp_req *r);
void tp_h_pi_capture(struct tp_req *r);
void tp_h_pi_cancel(struct tp_req *r);
void tp_h_pi_list(struct tp_req *r);
/* The 3-D Secure challenge token for a PaymentIntent (32 hex chars). */
void tp_3ds_token(const char *pi_id, char out[65]);
/* three_ds.c: the simulated 3-D Secure challenge page */
void tp_h_3ds_page(struct tp_req *r);
void tp_h_3ds_submit(struct tp_req *r);
/* refunds.c */
void tp_h_refund_create(struct tp_req *r);
void tp_h_refund_retrieve(struct tp_req *r);
void tp_h_refund_update(struct tp_req *r);
void tp_h_refund_list(struct tp_req *r);
/* charges.c */
void tp_h_charge_retrieve(struct tp_req *r);
void tp_h_charge_list(struct tp_req *r);
/* customers.c */
void tp_h_customer_create(struct tp_req *r);
void tp_h_customer_retrieve(struct tp_req *r);
void tp_h_customer_update(struct tp_req *r);
void tp_h_customer_delete(struct tp_req *r);
void tp_h_customer_list(struct tp_req *r);
/* payment_methods.c */
void tp_h_pm_create(struct tp_req *r);
void tp_h_pm_retrieve(struct tp_req *r);
void tp_h_pm_update(struct tp_req *r);
void tp_h_pm_attach(struct tp_req *r);
void tp_h_pm_detach(struct tp_req *r);
void tp_h_pm_list(struct tp_req *r);
void tp_h_customer_pm_list(struct tp_req *r);
/* events.c */
void tp_h_event_retrieve(struct tp_req *r);
void tp_h_event_list(struct tp_req *r);
/* balance.c */
void tp_h_balance(struct tp_req *r);
void tp_h_balance_txn_retrieve(struct tp_req *r);
void tp_h_balance_txn_list(struct tp_req *r);
/* health.c */
void tp_h_healthz(struct tp_req *r);
void tp_h_readyz(struct tp_req *r);
#endif

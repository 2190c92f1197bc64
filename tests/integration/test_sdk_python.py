"""The official Python SDK (Debian's python3-stripe, stripe-python 5.0)
against the real daemon: a second official client beside stripe-node
(tests/sdk), with its own encoding of parameters.

stripe-python sends a Python bool as the text of str(): "True" / "False"
(stripe-node sends "true"); it sends lists as key[0], key[1], nested
dictionaries as key[sub], no Stripe-Version header unless told, and maps
each error type to an exception class. Every flow below goes through the
SDK's own classes, as a merchant's code would."""
import hashlib
import http.server
import json
import sys
import threading
import time
import unittest

try:
    import stripe
except ImportError:  # a python3 other than Debian's: use Debian's package (scripts/deps.sh)
    sys.path.append("/usr/lib/python3/dist-packages")
    import stripe

from harness import (PAN_3DS, PAN_DECLINE, PAN_INSUFFICIENT, DaemonTestCase, card,
                     hostport, main, new_key)

WEBHOOK_CONFIG = """[webhooks]
retry_base_ms = 100
retry_max_ms = 400
scan_interval_ms = 300
timeout_ms = 1500
"""


class Inbox:
    """Webhook deliveries to 127.0.0.1, kept raw (body and signature header)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.got = []
        inbox = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with inbox.lock:
                    inbox.got.append((body, self.headers.get("Stripe-Signature")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, pred, seconds=15.0):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with self.lock:
                for body, sig in self.got:
                    if pred(json.loads(body)):
                        return body, sig
            time.sleep(0.05)
        raise AssertionError("no delivery matched in %.0f s" % seconds)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class StripePython(DaemonTestCase):
    MERCHANTS = ("py", "other", "pages", "apm")

    @classmethod
    def config(cls):
        return WEBHOOK_CONFIG

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        stripe.api_base = "http://" + hostport(cls.daemon.host, cls.daemon.port)
        stripe.max_network_retries = 0
        stripe.api_key = None  # each call names its merchant's key

    def key(self, merchant="py"):
        return self.daemon.merchants[merchant]["secret_key"]

    # -- payments ---------------------------------------------------------

    def test_python_booleans_confirm_and_capture(self):
        """confirm=True arrives as "True": the intent is confirmed, not
        refused as a bad boolean; manual capture, partial capture, and a
        False that keeps an intent unconfirmed."""
        k = self.key()
        pi = stripe.PaymentIntent.create(api_key=k, amount=1099, currency="usd",
                                         payment_method="pm_card_visa", confirm=True,
                                         metadata={"order": "o-1"}, expand=["latest_charge"])
        self.assertEqual(pi.status, "succeeded")
        self.assertEqual(pi.amount_received, 1099)
        self.assertEqual(pi.latest_charge.object, "charge")
        self.assertTrue(pi.latest_charge.captured)
        self.assertTrue(pi.latest_charge.paid)
        self.assertEqual(pi.latest_charge.payment_method_details.card.last4, "4242")
        self.assertEqual(pi.metadata["order"], "o-1")

        held = stripe.PaymentIntent.create(api_key=k, amount=2000, currency="eur",
                                           payment_method="pm_card_mastercard",
                                           capture_method="manual", confirm=True)
        self.assertEqual(held.status, "requires_capture")
        self.assertEqual(held.amount_capturable, 2000)
        done = held.capture(amount_to_capture=1500)  # the instance method
        self.assertEqual(done.status, "succeeded")
        self.assertEqual(done.amount_received, 1500)
        ch = stripe.Charge.retrieve(done.latest_charge, api_key=k)
        self.assertEqual((ch.amount, ch.amount_captured, ch.captured), (2000, 1500, True))

        later = stripe.PaymentIntent.create(api_key=k, amount=500, currency="usd",
                                            payment_method="pm_card_visa", confirm=False)
        self.assertEqual(later.status, "requires_confirmation")
        self.assertEqual(stripe.PaymentIntent.confirm(later.id, api_key=k).status, "succeeded")

        # A bool that is neither spelling is still refused, naming the parameter.
        r = self.c("py").post("/v1/payment_intents", {"amount": 500, "currency": "usd",
                                                      "confirm": "yes"})
        self.assertStripeError(r, 400, "invalid_request_error", param="confirm")

    def test_card_options_override_the_top_level(self):
        """payment_method_options[card][capture_method]=manual holds the
        funds although the top level says automatic (Stripe: the card's
        option overrides); [setup_future_usage]=none keeps a card unsaved
        that the top level would save; an option Turnpike does not know is
        refused, not ignored."""
        k = self.key()
        held = stripe.PaymentIntent.create(api_key=k, amount=1500, currency="usd",
                                           payment_method="pm_card_visa", confirm=True,
                                           capture_method="automatic",
                                           payment_method_options={"card": {"capture_method": "manual"}})
        self.assertEqual((held.status, held.amount_capturable, held.amount_received),
                         ("requires_capture", 1500, 0))
        self.assertEqual(held.payment_method_options.card.capture_method, "manual")
        ch = stripe.Charge.retrieve(held.latest_charge, api_key=k)
        self.assertFalse(ch.captured)
        self.assertGreater(ch.payment_method_details.card.capture_before, ch.created)
        self.assertNotIn("incremental_authorization", ch.payment_method_details.card)  # not asked for

        # Features asked for "if available" are taken, shown, and reported
        # unavailable on the charge (no connector offers them).
        inc = stripe.PaymentIntent.create(api_key=k, amount=1400, currency="usd", payment_method="pm_card_visa",
                                          confirm=True, capture_method="manual",
                                          payment_method_options={"card": {
                                              "request_incremental_authorization": "if_available",
                                              "request_overcapture": "never"}})
        self.assertEqual(inc.payment_method_options.card.request_incremental_authorization, "if_available")
        card_details = stripe.Charge.retrieve(inc.latest_charge, api_key=k).payment_method_details.card
        self.assertEqual(card_details.incremental_authorization.status, "unavailable")
        self.assertEqual(card_details.overcapture.status, "unavailable")
        self.assertEqual(held.capture().status, "succeeded")

        # Set on update, unset on confirm with "": captured at once.
        pi = stripe.PaymentIntent.create(api_key=k, amount=1600, currency="usd",
                                         payment_method="pm_card_visa")
        pi = stripe.PaymentIntent.modify(pi.id, api_key=k,
                                         payment_method_options={"card": {"capture_method": "manual"}})
        self.assertEqual(pi.payment_method_options.card.capture_method, "manual")
        pi = stripe.PaymentIntent.confirm(pi.id, api_key=k,
                                          payment_method_options={"card": {"capture_method": ""}})
        self.assertEqual(pi.status, "succeeded")
        self.assertNotIn("capture_method", pi.payment_method_options.card)

        cus = stripe.Customer.create(api_key=k)
        kept = stripe.PaymentIntent.create(api_key=k, amount=1700, currency="usd", customer=cus.id,
                                           setup_future_usage="off_session", confirm=True,
                                           payment_method_data={"type": "card",
                                                                "card": card("4242424242424242")["card"]},
                                           payment_method_options={"card": {"setup_future_usage": "none"}})
        self.assertEqual(kept.status, "succeeded")
        self.assertEqual(stripe.PaymentMethod.retrieve(kept.payment_method, api_key=k).customer, None)
        saved = stripe.PaymentIntent.create(api_key=k, amount=1800, currency="usd", customer=cus.id,
                                            confirm=True,
                                            payment_method_data={"type": "card",
                                                                 "card": card("4242424242424242")["card"]},
                                            payment_method_options={"card": {"setup_future_usage": "off_session"}})
        self.assertEqual(stripe.PaymentMethod.retrieve(saved.payment_method, api_key=k).customer, cus.id)

        before = len(stripe.PaymentIntent.list(api_key=k, limit=100).data)
        for bad, param in (({"card": {"capture_method": "automatic"}},
                            "payment_method_options[card][capture_method]"),
                           ({"card": {"installments_plan": "x"}},
                            "payment_method_options[card][installments_plan]"),
                           ({"sepa_debit": {"mandate": "x"}}, "payment_method_options[sepa_debit]")):
            with self.assertRaises(stripe.error.InvalidRequestError) as e:
                stripe.PaymentIntent.create(api_key=k, amount=1900, currency="usd", confirm=True,
                                            payment_method="pm_card_visa", payment_method_options=bad)
            self.assertEqual(e.exception.param, param)
        self.assertEqual(len(stripe.PaymentIntent.list(api_key=k, limit=100).data), before)

    def test_automatic_payment_methods_confirm_needs_a_return_url(self):
        """Stripe refuses to confirm a PaymentIntent open to every automatic
        payment method without a return_url (one may redirect); with one, or
        allow_redirects=never, it goes through. The refused create+confirm
        leaves nothing behind."""
        k = self.key("apm")
        before = [p.id for p in stripe.PaymentIntent.list(api_key=k, limit=100).data]
        with self.assertRaises(stripe.error.InvalidRequestError) as e:
            stripe.PaymentIntent.create(api_key=k, amount=1000, currency="usd", confirm=True,
                                        payment_method="pm_card_visa",
                                        automatic_payment_methods={"enabled": True})
        self.assertEqual((e.exception.param, e.exception.code), ("return_url", "parameter_missing"))
        self.assertIn("allow_redirects", e.exception.user_message)
        self.assertEqual([p.id for p in stripe.PaymentIntent.list(api_key=k, limit=100).data], before)

        ok = stripe.PaymentIntent.create(api_key=k, amount=1000, currency="usd", confirm=True,
                                         payment_method="pm_card_visa",
                                         automatic_payment_methods={"enabled": True},
                                         return_url="https://shop.example/back")
        self.assertEqual(ok.status, "succeeded")
        never = stripe.PaymentIntent.create(api_key=k, amount=1000, currency="usd", confirm=True,
                                            payment_method="pm_card_visa",
                                            automatic_payment_methods={"enabled": True,
                                                                       "allow_redirects": "never"})
        self.assertEqual(never.status, "succeeded")
        # Created first, confirmed later: the confirmation is where it is asked.
        pi = stripe.PaymentIntent.create(api_key=k, amount=1000, currency="usd",
                                         automatic_payment_methods={"enabled": True})
        with self.assertRaises(stripe.error.InvalidRequestError):
            stripe.PaymentIntent.confirm(pi.id, api_key=k, payment_method="pm_card_visa")
        self.assertEqual(stripe.PaymentIntent.retrieve(pi.id, api_key=k).status, "requires_payment_method")
        pi = stripe.PaymentIntent.confirm(pi.id, api_key=k, payment_method="pm_card_visa",
                                          return_url="https://shop.example/back")
        self.assertEqual(pi.status, "succeeded")

    def test_shipping_in_stripes_shape(self):
        """A payment's shipping is checked and shown as Stripe shows it: the
        whole address (absent lines null, country upper-cased), carrier and
        tracking_number; name and address are required; a charge's shipping
        is updated the same way, and "" removes it."""
        k = self.key()
        pi = stripe.PaymentIntent.create(api_key=k, amount=2100, currency="usd",
                                         payment_method="pm_card_visa", confirm=True,
                                         shipping={"name": "Ada", "address": {"line1": "1 Main St",
                                                                              "country": "us"}})
        self.assertEqual(pi.shipping.to_dict_recursive(), {
            "name": "Ada", "phone": None, "carrier": None, "tracking_number": None,
            "address": {"line1": "1 Main St", "line2": None, "city": None, "state": None,
                        "postal_code": None, "country": "US"}})
        # The charge carries the payment's shipping and descriptors.
        ch = stripe.Charge.retrieve(pi.latest_charge, api_key=k)
        self.assertEqual(ch.shipping.to_dict_recursive(), pi.shipping.to_dict_recursive())
        self.assertEqual(ch.calculated_statement_descriptor, "PY")  # the merchant's name
        sfx = stripe.PaymentIntent.create(api_key=k, amount=2200, currency="usd", confirm=True,
                                          payment_method="pm_card_visa", statement_descriptor_suffix="order 7")
        ch = stripe.Charge.retrieve(sfx.latest_charge, api_key=k)
        self.assertEqual((ch.statement_descriptor_suffix, ch.calculated_statement_descriptor),
                         ("order 7", "PY* ORDER 7"))
        for bad, param in (({"payment_method_types": ["card", "sepa_debit"]}, "payment_method_types"),
                           ({"receipt_email": "not-an-address"}, "receipt_email"),
                           ({"description": "d" * 1001}, "description")):
            with self.assertRaises(stripe.error.InvalidRequestError) as e:
                stripe.PaymentIntent.create(api_key=k, amount=2200, currency="usd", **bad)
            self.assertEqual(e.exception.param, param, bad)
            with self.assertRaises(stripe.error.InvalidRequestError) as e:
                stripe.PaymentIntent.modify(pi.id, api_key=k, **bad)
            self.assertEqual(e.exception.param, param, bad)
        with self.assertRaises(stripe.error.InvalidRequestError) as e:
            stripe.Charge.modify(pi.latest_charge, api_key=k, receipt_email="nope")
        self.assertEqual(e.exception.code, "email_invalid")
        for bad in ({"statement_descriptor_suffix": "x" * 23}, {"statement_descriptor_suffix": "1234"},
                    {"statement_descriptor_suffix": "a<b"}, {"statement_descriptor": "ABC"},
                    {"statement_descriptor": 'SHOP "X"'}, {"statement_descriptor": "caf\u00e9 shop"}):
            with self.assertRaises(stripe.error.InvalidRequestError) as e:
                stripe.PaymentIntent.create(api_key=k, amount=2200, currency="usd", **bad)
            self.assertEqual(e.exception.param, list(bad)[0], bad)
        # After confirmation shipping may still change (a tracking number).
        pi = stripe.PaymentIntent.modify(pi.id, api_key=k, shipping={
            "name": "Ada", "carrier": "DHL", "tracking_number": "JD0001",
            "address": {"line1": "1 Main St", "country": "US"}})
        self.assertEqual((pi.shipping.carrier, pi.shipping.tracking_number), ("DHL", "JD0001"))
        ch = stripe.Charge.modify(pi.latest_charge, api_key=k, shipping={
            "name": "Bo", "address": {"city": "Oslo", "country": "no"}})
        self.assertEqual((ch.shipping.name, ch.shipping.address.city, ch.shipping.address.country),
                         ("Bo", "Oslo", "NO"))
        self.assertIsNone(stripe.Charge.modify(pi.latest_charge, api_key=k, shipping="").shipping)

        for bad, param in (({"address": {"line1": "x"}}, "shipping[name]"),
                           ({"name": "Ada"}, "shipping[address]"),
                           ({"name": "Ada", "address": {"country": "USA"}}, "shipping[address][country]"),
                           ({"name": "Ada", "address": {"line1": "x"}, "colour": "red"},
                            "shipping[colour]"),
                           ({"name": "A" * 300, "address": {"line1": "x"}}, "shipping[name]")):
            with self.assertRaises(stripe.error.InvalidRequestError) as e:
                stripe.PaymentIntent.modify(pi.id, api_key=k, shipping=bad)
            self.assertEqual(e.exception.param, param, bad)
        self.assertEqual(stripe.PaymentIntent.retrieve(pi.id, api_key=k).shipping.carrier, "DHL")

    def test_update_confirm_cancel_and_list(self):
        k = self.key()
        pi = stripe.PaymentIntent.create(api_key=k, amount=700, currency="usd")
        self.assertEqual(pi.status, "requires_payment_method")
        pi = stripe.PaymentIntent.modify(pi.id, api_key=k, description="seven",
                                         payment_method="pm_card_amex", metadata={"a": "1"})
        self.assertEqual((pi.status, pi.description), ("requires_confirmation", "seven"))
        pi = stripe.PaymentIntent.retrieve(pi.id, api_key=k).confirm()
        self.assertEqual(pi.status, "succeeded")
        # Unsetting a metadata key with an empty value, as Stripe documents.
        pi = stripe.PaymentIntent.modify(pi.id, api_key=k, metadata={"a": ""})
        self.assertNotIn("a", pi.metadata)

        gone = stripe.PaymentIntent.create(api_key=k, amount=800, currency="usd")
        gone = gone.cancel(cancellation_reason="requested_by_customer")
        self.assertEqual((gone.status, gone.cancellation_reason),
                         ("canceled", "requested_by_customer"))
        with self.assertRaises(stripe.error.InvalidRequestError) as e:
            gone.cancel()
        self.assertEqual(e.exception.code, "payment_intent_unexpected_state")
        self.assertEqual(e.exception.http_status, 400)

    def test_auto_paging_walks_every_page(self):
        """auto_paging_iter follows has_more with starting_after; a
        merchant of its own holds exactly what this test made."""
        k = self.key("pages")
        cus = stripe.Customer.create(api_key=k, email="pages@example.com")
        made = [stripe.PaymentIntent.create(api_key=k, amount=100 + i, currency="usd",
                                            customer=cus.id).id for i in range(7)]
        seen = [p.id for p in stripe.PaymentIntent.list(api_key=k, limit=2,
                                                        customer=cus.id).auto_paging_iter()]
        self.assertEqual(seen, list(reversed(made)))  # newest first, each once
        page = stripe.PaymentIntent.list(api_key=k, limit=3)
        self.assertEqual(len(page.data), 3)
        self.assertTrue(page.has_more)
        older = stripe.PaymentIntent.list(api_key=k, limit=3, starting_after=page.data[-1].id)
        self.assertEqual([p.id for p in older.data], list(reversed(made))[3:6])
        newer = stripe.PaymentIntent.list(api_key=k, limit=10, ending_before=older.data[0].id)
        self.assertEqual([p.id for p in newer.data], list(reversed(made))[:3])
        created = stripe.PaymentIntent.retrieve(made[0], api_key=k).created
        since = stripe.PaymentIntent.list(api_key=k, limit=100, created={"gte": created})
        self.assertEqual(len(since.data), 7)

    # -- customers, cards, refunds -----------------------------------------

    def test_customer_saved_card_off_session_and_refunds(self):
        k = self.key()
        cus = stripe.Customer.create(api_key=k, email="ada@example.com", name="Ada",
                                     metadata={"tier": "gold"})
        pm = stripe.PaymentMethod.create(api_key=k, type="card",
                                         card={"number": "5555555555554444", "exp_month": 4,
                                               "exp_year": 2033, "cvc": "314"})
        self.assertEqual((pm.card.brand, pm.card.last4, pm.card.exp_year),
                         ("mastercard", "4444", 2033))
        self.assertNotIn("5555555555554444", json.dumps(pm.to_dict_recursive()))
        # billing_details are checked: an address's country is two letters
        # (upper-cased), an email an address; through payment_method_data too.
        billed = stripe.PaymentMethod.create(api_key=k, type="card",
                                             card={"number": "4242424242424242", "exp_month": 4,
                                                   "exp_year": 2033},
                                             billing_details={"email": "ada@example.com",
                                                              "address": {"country": "gb"}})
        self.assertEqual(billed.billing_details.address.country, "GB")
        for bd, param in (({"email": "ada"}, "billing_details[email]"),
                          ({"address": {"country": "GBR"}}, "billing_details[address][country]")):
            with self.assertRaises(stripe.error.InvalidRequestError) as e:
                stripe.PaymentMethod.create(api_key=k, type="card", billing_details=bd,
                                            card={"number": "4242424242424242", "exp_month": 4,
                                                  "exp_year": 2033})
            self.assertEqual(e.exception.param, param)
            with self.assertRaises(stripe.error.InvalidRequestError) as e:
                stripe.PaymentIntent.create(api_key=k, amount=900, currency="usd", confirm=True,
                                            payment_method_data={"type": "card", "billing_details": bd,
                                                                 "card": card("4242424242424242")["card"]})
            self.assertEqual(e.exception.param,
                             "payment_method_data[billing_details]" + param[len("billing_details"):])
        stripe.PaymentMethod.attach(pm.id, api_key=k, customer=cus.id)
        listed = stripe.Customer.list_payment_methods(cus.id, api_key=k, type="card")
        self.assertEqual([p.id for p in listed.data], [pm.id])
        self.assertEqual(stripe.Customer.retrieve_payment_method(cus.id, pm.id, api_key=k).id,
                         pm.id)
        cus = stripe.Customer.modify(cus.id, api_key=k,
                                     invoice_settings={"default_payment_method": pm.id})
        self.assertEqual(cus.invoice_settings.default_payment_method, pm.id)

        # The saved card charged with the customer away: off_session=True.
        pi = stripe.PaymentIntent.create(api_key=k, amount=4200, currency="gbp", customer=cus.id,
                                         payment_method=pm.id, off_session=True, confirm=True)
        self.assertEqual(pi.status, "succeeded")
        self.assertEqual(pi.customer, cus.id)

        r1 = stripe.Refund.create(api_key=k, payment_intent=pi.id, amount=1000,
                                  reason="requested_by_customer")
        self.assertEqual((r1.status, r1.amount, r1.currency), ("succeeded", 1000, "gbp"))
        r2 = stripe.Refund.create(api_key=k, charge=pi.latest_charge)
        self.assertEqual(r2.amount, 3200)  # the rest
        ch = stripe.Charge.retrieve(pi.latest_charge, api_key=k, expand=["refunds"])
        self.assertEqual((ch.amount_refunded, ch.refunded), (4200, True))
        self.assertEqual([r.id for r in ch.refunds.data], [r2.id, r1.id])
        self.assertEqual({r.id for r in stripe.Refund.list(api_key=k, payment_intent=pi.id)
                          .auto_paging_iter()}, {r1.id, r2.id})
        with self.assertRaises(stripe.error.InvalidRequestError) as e:
            stripe.Refund.create(api_key=k, payment_intent=pi.id, amount=1)
        self.assertEqual(e.exception.code, "charge_already_refunded")

        # The ledger saw it: the charge waits in the pending balance, the
        # refunds came out of the available one at once (Stripe), 0 in all.
        bal = stripe.Balance.retrieve(api_key=k)
        gbp = [(b.amount, a.amount) for b in bal.pending for a in bal.available
               if b.currency == "gbp" and a.currency == "gbp"]
        self.assertEqual(gbp, [(4200, -4200)])

        detached = stripe.PaymentMethod.detach(pm.id, api_key=k)
        self.assertIsNone(detached.customer)
        deleted = stripe.Customer.delete(cus.id, api_key=k)
        self.assertTrue(deleted.deleted)
        # As Stripe: a deleted customer still retrieves, as its id and deleted.
        again = stripe.Customer.retrieve(cus.id, api_key=k)
        self.assertEqual((again.id, again.get("deleted")), (cus.id, True))
        self.assertNotIn(cus.id, [c.id for c in stripe.Customer.list(api_key=k, limit=100).data])

    # -- errors -----------------------------------------------------------

    def test_errors_reach_the_sdk_exception_classes(self):
        k = self.key()
        with self.assertRaises(stripe.error.CardError) as e:
            stripe.PaymentIntent.create(api_key=k, amount=900, currency="usd", confirm=True,
                                        payment_method_data={"type": "card",
                                                             "card": card(PAN_DECLINE)["card"]})
        self.assertEqual((e.exception.code, e.exception.http_status), ("card_declined", 402))
        self.assertEqual(e.exception.error.decline_code, "generic_decline")
        self.assertEqual(e.exception.error.payment_intent.status, "requires_payment_method")
        self.assertTrue(e.exception.request_id.startswith("req_"))
        with self.assertRaises(stripe.error.CardError) as e:
            stripe.PaymentIntent.create(api_key=k, amount=900, currency="usd", confirm=True,
                                        payment_method_data={"type": "card",
                                                             "card": card(PAN_INSUFFICIENT)["card"]})
        self.assertEqual(e.exception.error.decline_code, "insufficient_funds")

        with self.assertRaises(stripe.error.InvalidRequestError) as e:
            stripe.PaymentIntent.create(api_key=k, amount=900, currency="zzz")
        self.assertEqual(e.exception.param, "currency")
        with self.assertRaises(stripe.error.InvalidRequestError) as e:
            stripe.PaymentIntent.retrieve("pi_doesnotexist", api_key=k)
        self.assertEqual(e.exception.http_status, 404)
        with self.assertRaises(stripe.error.AuthenticationError) as e:
            stripe.Customer.list(api_key="sk_test_notakey")
        self.assertEqual(e.exception.http_status, 401)

        # Another merchant's object is not found, not shown.
        mine = stripe.Customer.create(api_key=k)
        with self.assertRaises(stripe.error.InvalidRequestError) as e:
            stripe.Customer.retrieve(mine.id, api_key=self.key("other"))
        self.assertEqual(e.exception.http_status, 404)

    def test_charges_api(self):
        """stripe.Charge.create (the Charges API), with Python's False for
        capture, then Charge.capture; a decline is a CardError naming the
        charge."""
        k = self.key()
        ch = stripe.Charge.create(api_key=k, amount=2100, currency="usd", source="tok_visa",
                                  description="py legacy", capture=False)
        self.assertEqual((ch.object, ch.captured, ch.status), ("charge", False, "succeeded"))
        ch = stripe.Charge.capture(ch.id, api_key=k, amount=2000)
        self.assertEqual((ch.captured, ch.amount_captured, ch.description), (True, 2000, "py legacy"))
        with self.assertRaises(stripe.error.CardError) as e:
            stripe.Charge.create(api_key=k, amount=2100, currency="usd", source="tok_chargeDeclinedInsufficientFunds")
        self.assertEqual(e.exception.error.decline_code, "insufficient_funds")
        self.assertEqual(stripe.Charge.retrieve(e.exception.error.charge, api_key=k).status, "failed")

    def test_tokens_and_a_customer_s_cards(self):
        """The legacy flow through stripe-python: Token.create, a customer
        made with the token as its source, Charge.create with the customer;
        Customer.create_source / list_sources / delete_source; a used token
        is an InvalidRequestError."""
        k = self.key()
        tok = stripe.Token.create(api_key=k, card={"number": "4242424242424242", "exp_month": 9,
                                                   "exp_year": 2031, "cvc": "123"})
        self.assertEqual((tok.object, tok.used, tok.card.brand, tok.card.last4), ("token", False, "Visa", "4242"))
        cus = stripe.Customer.create(api_key=k, source=tok.id)
        ch = stripe.Charge.create(api_key=k, amount=1200, currency="usd", customer=cus.id)
        self.assertEqual((ch.status, ch.source.id, ch.source.object), ("succeeded", cus.default_source, "card"))
        with self.assertRaises(stripe.error.InvalidRequestError) as cm:
            stripe.Charge.create(api_key=k, amount=1200, currency="usd", source=tok.id)
        self.assertEqual(cm.exception.code, "token_already_used")
        card = stripe.Customer.create_source(cus.id, api_key=k, source="tok_mastercard")
        self.assertEqual(card.brand, "MasterCard")
        ids = [c.id for c in stripe.Customer.list_sources(cus.id, api_key=k, object="card").auto_paging_iter()]
        self.assertEqual(sorted(ids), sorted([cus.default_source, card.id]))
        gone = stripe.Customer.delete_source(cus.id, card.id, api_key=k)
        self.assertTrue(gone.deleted)
        # the default card detached through the PaymentMethods API: the
        # newest other card becomes the default, as deleting it as a source
        # does (it was left null, and a charge by customer then failed)
        two = stripe.Customer.create(api_key=k, source="tok_visa")
        other = stripe.Customer.create_source(two.id, api_key=k, source="tok_mastercard")
        stripe.PaymentMethod.detach(two.default_source, api_key=k)
        self.assertEqual(stripe.Customer.retrieve(two.id, api_key=k).default_source, other.id)
        ch = stripe.Charge.create(api_key=k, amount=700, currency="usd", customer=two.id)
        self.assertEqual((ch.status, ch.source.id), ("succeeded", other.id))
        stripe.PaymentMethod.detach(other.id, api_key=k)
        self.assertIsNone(stripe.Customer.retrieve(two.id, api_key=k).default_source)
        self.assertEqual(stripe.Account.retrieve(api_key=k).id, self.daemon.merchants[self.MERCHANTS[0]]["id"])

    def test_stripe_s_international_test_cards(self):
        """Stripe's international test cards (docs.stripe.com/testing):
        their pm_card_ and tok_ ids, and their numbers, give the card's
        country and funding (routing rules match on card.country). Most
        answered US, and pm_card_pl 404."""
        k = self.key()
        for name, country, funding in (("pl", "PL", "credit"), ("nz", "NZ", "credit"), ("ae", "AE", "credit"),
                                       ("cz", "CZ", "credit"), ("gb_mastercard", "GB", "credit"),
                                       ("th_debit", "TH", "debit"), ("ar", "AR", "credit")):
            pm = stripe.PaymentMethod.retrieve("pm_card_" + name, api_key=k)
            self.assertEqual((pm.card.country, pm.card.funding), (country, funding), name)
        cus = stripe.Customer.create(api_key=k, source="tok_nz")
        card = stripe.Customer.retrieve_source(cus.id, cus.default_source, api_key=k)
        self.assertEqual(card.country, "NZ")
        for number, country, funding in (("4000006160000005", "PL", "credit"), ("6200000000000047", "US", "debit"),
                                         ("4000050360000001", "AU", "debit"), ("3530111333300000", "JP", "credit")):
            pm = stripe.PaymentMethod.create(api_key=k, type="card", card={"number": number, "exp_month": 12,
                                                                          "exp_year": 2034, "cvc": "123"})
            self.assertEqual((pm.card.country, pm.card.funding), (country, funding), number)

    def test_idempotency_keys(self):
        k = self.key()
        key = new_key("py")
        a = stripe.PaymentIntent.create(api_key=k, idempotency_key=key, amount=1234,
                                        currency="usd", payment_method="pm_card_visa",
                                        confirm=True)
        b = stripe.PaymentIntent.create(api_key=k, idempotency_key=key, amount=1234,
                                        currency="usd", payment_method="pm_card_visa",
                                        confirm=True)
        self.assertEqual(a.id, b.id)
        self.assertEqual(b.last_response.headers.get("Idempotent-Replayed"), "true")
        charges = stripe.Charge.list(api_key=k, payment_intent=a.id)
        self.assertEqual(len(charges.data), 1)  # charged once
        with self.assertRaises(stripe.error.IdempotencyError):
            stripe.PaymentIntent.create(api_key=k, idempotency_key=key, amount=1235,
                                        currency="usd", payment_method="pm_card_visa",
                                        confirm=True)

    def test_other_resources_through_the_sdk(self):
        """Webhook endpoints, balance transactions, search with paging, and
        list filters, each through its stripe-python class."""
        k = self.key("other")
        we = stripe.WebhookEndpoint.create(api_key=k, url="https://hooks.example/py",
                                           enabled_events=["charge.succeeded", "charge.refunded"],
                                           description="py", metadata={"team": "pay"})
        we = stripe.WebhookEndpoint.modify(we.id, api_key=k, disabled=True, description="off")
        self.assertEqual((we.status, we.description), ("disabled", "off"))
        self.assertIn(we.id, [w.id for w in stripe.WebhookEndpoint.list(api_key=k).auto_paging_iter()])
        self.assertTrue(stripe.WebhookEndpoint.delete(we.id, api_key=k).deleted)
        with self.assertRaises(stripe.error.InvalidRequestError):
            stripe.WebhookEndpoint.retrieve(we.id, api_key=k)

        tag = new_key("s")[:20]
        paid = [stripe.PaymentIntent.create(api_key=k, amount=600 + i, currency="usd", confirm=True,
                                            payment_method="pm_card_visa", metadata={"batch": tag})
                for i in range(3)]
        found = stripe.PaymentIntent.search(api_key=k, query="metadata['batch']:'%s'" % tag, limit=2)
        ids = [p.id for p in found.auto_paging_iter()]
        self.assertEqual(sorted(ids), sorted(p.id for p in paid))

        ch = stripe.Charge.retrieve(paid[0].latest_charge, api_key=k, expand=["balance_transaction"])
        bt = ch.balance_transaction
        self.assertEqual((bt.object, bt.amount, bt.source, bt.type), ("balance_transaction", 600, ch.id, "charge"))
        self.assertEqual(stripe.BalanceTransaction.retrieve(bt.id, api_key=k).net, 600)
        listed = stripe.BalanceTransaction.list(api_key=k, source=ch.id)
        self.assertEqual([b.id for b in listed.data], [bt.id])

        refunded = stripe.Refund.create(api_key=k, charge=ch.id)
        with self.assertRaises(stripe.error.InvalidRequestError):
            stripe.Refund.cancel(refunded.id, api_key=k)  # only a refund waiting for an action cancels
        events = stripe.Event.list(api_key=k, type="charge.refunded", limit=1).data
        self.assertEqual(events[0].data.object.id, ch.id)
        self.assertTrue(events[0].data.object.refunded)

    # -- 3-D Secure, events, search, webhooks ----------------------------------

    def test_fields_stripe_sends_as_null_are_attributes(self):
        """stripe-python raises AttributeError for a key an object lacks: the
        fields Stripe always sends, null where Turnpike has no such feature,
        read as attributes the way merchant code reads them."""
        k = self.key()
        pi = stripe.PaymentIntent.create(api_key=k, amount=1234, currency="usd", payment_method="pm_card_visa",
                                         confirm=True, expand=["latest_charge"])
        ch = pi.latest_charge
        self.assertIsNone(ch.receipt_url)
        self.assertIsNone(ch.review)
        self.assertIsNone(ch.application_fee_amount)
        self.assertIsNone(ch.transfer_data)
        self.assertIsNone(ch.failure_balance_transaction)
        self.assertIsNone(ch.outcome.advice_code)
        self.assertEqual(ch.payment_method_details.card.amount_authorized, 1234)
        self.assertEqual(ch.payment_method_details.card.authorization_code, ch.authorization_code)
        self.assertIsNone(ch.payment_method_details.card.network_transaction_id)
        self.assertIsNone(pi.payment_record)
        self.assertIsNone(pi.source)
        self.assertIsNone(pi.excluded_payment_method_types)
        pm = stripe.PaymentMethod.retrieve(pi.payment_method, api_key=k)
        self.assertIsNone(pm.card.regulated_status)
        self.assertIsNone(pm.billing_details.tax_id)
        re = stripe.Refund.create(api_key=k, payment_intent=pi.id, amount=100)
        self.assertEqual(re.payment_method, pi.payment_method)
        self.assertIsNone(re.customer)
        bt = stripe.BalanceTransaction.retrieve(ch.balance_transaction, api_key=k)
        self.assertEqual(bt.balance_type, "payments")

    def test_setup_intents_and_disputes_through_the_sdk(self):
        k = self.key()
        cus = stripe.Customer.create(api_key=k, email="py-si@example.test")
        si = stripe.SetupIntent.create(api_key=k, customer=cus.id, payment_method="pm_card_visa", confirm=True)
        self.assertEqual((si.status, si.usage), ("succeeded", "off_session"))
        attempts = stripe.SetupAttempt.list(api_key=k, setup_intent=si.id)
        self.assertEqual([(a.id, a.status) for a in attempts.auto_paging_iter()], [(si.latest_attempt, "succeeded")])
        self.assertEqual(stripe.PaymentMethod.retrieve(si.payment_method, api_key=k).customer, cus.id)
        listed = stripe.SetupIntent.list(api_key=k, customer=cus.id)
        self.assertEqual([s.id for s in listed.auto_paging_iter()], [si.id])
        with self.assertRaises(stripe.error.CardError) as cm:
            stripe.SetupIntent.create(api_key=k, customer=cus.id, payment_method="pm_card_chargeDeclined",
                                      confirm=True)
        self.assertEqual(cm.exception.code, "card_declined")
        pi = stripe.PaymentIntent.create(api_key=k, amount=3000, currency="usd", confirm=True,
                                         payment_method="pm_card_createDispute")
        dp = stripe.Dispute.list(api_key=k, charge=pi.latest_charge).data[0]
        self.assertEqual((dp.status, dp.reason, dp.evidence.uncategorized_text), ("needs_response", "fraudulent",
                                                                                    None))
        won = stripe.Dispute.modify(dp.id, api_key=k, evidence={"uncategorized_text": "winning_evidence"})
        self.assertEqual(won.status, "won")
        with self.assertRaises(stripe.error.InvalidRequestError) as cm:
            stripe.Refund.create(api_key=k, charge=pi.latest_charge)
        self.assertEqual(cm.exception.code, "charge_disputed")

    def test_three_d_secure_stops_in_requires_action(self):
        k = self.key()
        pi = stripe.PaymentIntent.create(api_key=k, amount=2500, currency="eur", confirm=True,
                                         payment_method_data={"type": "card",
                                                              "card": card(PAN_3DS)["card"]},
                                         return_url="https://shop.example/done")
        self.assertEqual(pi.status, "requires_action")
        self.assertEqual(pi.next_action.type, "redirect_to_url")
        self.assertTrue(pi.next_action.redirect_to_url.url.startswith("http"))
        self.assertEqual(pi.next_action.redirect_to_url.return_url, "https://shop.example/done")

    def test_events_search_and_signed_webhooks(self):
        k = self.key("other")
        inbox = Inbox()
        self.addCleanup(inbox.close)
        we = stripe.WebhookEndpoint.create(api_key=k, url="http://127.0.0.1:%d/hook" % inbox.port,
                                           enabled_events=["payment_intent.succeeded"])
        self.assertTrue(we.secret.startswith("whsec_"))
        tag = hashlib.sha256(new_key().encode()).hexdigest()[:12]
        pi = stripe.PaymentIntent.create(api_key=k, amount=3100, currency="usd", confirm=True,
                                         payment_method="pm_card_visa", metadata={"tag": tag})

        ev = stripe.Event.list(api_key=k, type="payment_intent.succeeded", limit=1).data[0]
        self.assertEqual(ev.data.object.id, pi.id)
        self.assertEqual(stripe.Event.retrieve(ev.id, api_key=k).type, "payment_intent.succeeded")

        found = stripe.PaymentIntent.search(api_key=k, query="metadata['tag']:'%s'" % tag)
        self.assertEqual([p.id for p in found.data], [pi.id])

        body, sig = inbox.wait(lambda e: e["data"]["object"]["id"] == pi.id)
        event = stripe.Webhook.construct_event(body.decode(), sig, we.secret)
        self.assertEqual((event.type, event.data.object.amount), ("payment_intent.succeeded", 3100))
        with self.assertRaises(stripe.error.SignatureVerificationError):
            stripe.Webhook.construct_event(body.decode().replace("3100", "3101"), sig, we.secret)
        with self.assertRaises(stripe.error.SignatureVerificationError):
            stripe.Webhook.construct_event(body.decode(), sig, "whsec_wrong")


if __name__ == "__main__":
    main()

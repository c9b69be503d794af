"""The Python signer against the shared vectors (tokens/vectors.json).
Run: python3 -m unittest discover -s tokens/python"""

import json
import pathlib
import unittest

from chargeonce_token import OrderTokenError, sign_order_token

VECTORS = json.loads((pathlib.Path(__file__).parent.parent / "vectors.json").read_text("utf-8"))


class SignOrderToken(unittest.TestCase):
    def test_signs_each_vector(self):
        for v in VECTORS["signed"]:
            with self.subTest(v["name"]):
                self.assertEqual(sign_order_token(v["claims"], v["secret"]), v["token"])
                self.assertEqual(sign_order_token(v["claims"], v["secret"].encode()), v["token"])

    def test_refuses_each_vector(self):
        for v in VECTORS["refused"]:
            with self.subTest(v["name"]):
                with self.assertRaises(OrderTokenError) as refused:
                    sign_order_token(v["claims"], v["secret"])
                self.assertEqual(refused.exception.field, v["field"])

    def test_refuses_unknown_and_missing_claims(self):
        v = VECTORS["signed"][0]
        with self.assertRaisesRegex(OrderTokenError, "tip is not a claim"):
            sign_order_token({**v["claims"], "tip": 5}, v["secret"])
        claims = dict(v["claims"])
        del claims["customer"]
        with self.assertRaisesRegex(OrderTokenError, "customer must be a non-empty string"):
            sign_order_token(claims, v["secret"])

    def test_writes_the_claims_in_the_edges_order(self):
        v = VECTORS["signed"][0]
        reversed_claims = dict(reversed(list(v["claims"].items())))
        self.assertEqual(sign_order_token(reversed_claims, v["secret"]), v["token"])


if __name__ == "__main__":
    unittest.main()

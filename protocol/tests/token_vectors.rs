//! The order-token test vectors every signer in `tokens/` is checked
//! against (JavaScript, Python, PHP): the Rust signer the edge verifies with
//! must make the same tokens, and read back the same claims.

use chargeonce_protocol::token::OrderClaims;
use serde_json::Value;

const VECTORS: &str = include_str!("../../tokens/vectors.json");

#[test]
fn the_rust_signer_makes_every_vectors_token_and_reads_its_claims_back() {
    let vectors: Value = serde_json::from_str(VECTORS).expect("tokens/vectors.json is JSON");
    let signed = vectors["signed"]
        .as_array()
        .expect("a list of signed vectors");
    assert!(signed.len() >= 5, "the vectors were read");
    for vector in signed {
        let name = vector["name"].as_str().unwrap();
        let secret = vector["secret"].as_str().unwrap().as_bytes();
        let claims: OrderClaims =
            serde_json::from_value(vector["claims"].clone()).expect("claims the edge reads");
        let token = vector["token"].as_str().unwrap();
        assert_eq!(claims.sign(secret), token, "{name}");
        assert_eq!(OrderClaims::verify(token, secret), Ok(claims), "{name}");
    }
}

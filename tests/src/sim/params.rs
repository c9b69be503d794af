//! Parsing and validating requests: payment bodies, for both endpoints, into one
//! [`PaymentParams`], and the query strings of the two lookups.
//!
//! Everything rejected here is a parameter-validation error: like Stripe, the simulator answers
//! it with a 400 and never stores it under an idempotency key. What passes is executed, even if the
//! outcome is a decline or an unknown payment method.

use std::collections::BTreeMap;

use serde_json::Value;

use super::wire::ApiError;

const FORM_MEDIA_TYPE: &str = "application/x-www-form-urlencoded";
const JSON_MEDIA_TYPE: &str = "application/json";

/// A validated payment request, whichever endpoint it came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PaymentParams {
    pub amount: u64,
    pub currency: String,
    pub payment_method: String,
    pub confirm: bool,
    /// Where a redirect-based authentication sends the customer back to; only the form takes one.
    pub return_url: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// The parameter set an idempotency key is bound to; equal sets replay, different ones conflict.
///
/// A map, so that the order of form fields or JSON members does not matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint(BTreeMap<String, String>);

/// Parses a `POST /v1/payment_intents` form body.
///
/// Unknown parameters are ignored, as the edge may send Stripe parameters the simulator does not
/// model, but they are part of the fingerprint, as Stripe compares every parameter.
pub(crate) fn parse_form(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(PaymentParams, Fingerprint), ApiError> {
    require_media_type(content_type, FORM_MEDIA_TYPE)?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|e| {
        ApiError::invalid_request(format!(
            "Invalid application/x-www-form-urlencoded body: {e}"
        ))
    })?;
    let form = unique_params(pairs)?;

    let amount = parse_amount(required(&form, "amount")?)?;
    let currency = parse_currency(required(&form, "currency")?)?;
    let payment_method = required(&form, "payment_method")?.to_owned();
    let confirm = optional_bool(&form, "confirm")?.unwrap_or(false);
    let apm_enabled = optional_bool(&form, "automatic_payment_methods[enabled]")?;
    let allow_redirects = form
        .get("automatic_payment_methods[allow_redirects]")
        .map(|v| match v.as_str() {
            "always" | "never" => Ok(v.as_str()),
            other => Err(ApiError::invalid_param(
                "automatic_payment_methods[allow_redirects]",
                format!("Invalid automatic_payment_methods[allow_redirects]: must be one of always or never, got '{other}'"),
            )),
        })
        .transpose()?;
    if allow_redirects.is_some() && apm_enabled.is_none() {
        // Stripe requires `enabled` whenever the automatic_payment_methods hash is sent.
        return Err(ApiError::invalid_param(
            "automatic_payment_methods[enabled]",
            "Missing required param: automatic_payment_methods[enabled].",
        ));
    }
    let return_url = form.get("return_url").filter(|url| !url.is_empty());
    if confirm && return_url.is_none() && allow_redirects != Some("never") {
        return Err(ApiError::invalid_request(
            "This PaymentIntent is configured to accept payment methods enabled in your Dashboard, \
             some of which may require a full page redirect to succeed. If you wish to allow \
             redirect-based payment methods, provide a `return_url` when confirming the \
             PaymentIntent. If you do not want to accept redirect-based payment methods, set \
             `automatic_payment_methods[enabled]` to `true` and \
             `automatic_payment_methods[allow_redirects]` to `never`.",
        ));
    }
    let metadata = form
        .iter()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((key.to_owned(), value.clone()))
        })
        .collect();

    let params = PaymentParams {
        amount,
        currency,
        payment_method,
        confirm,
        return_url: return_url.cloned(),
        metadata,
    };
    Ok((params, Fingerprint(form)))
}

/// Parses a `POST /v1/orders` JSON body; the order is always confirmed.
///
/// Unknown members are ignored and left out of the fingerprint, so only what decides the charge
/// binds the idempotency key.
pub(crate) fn parse_order_json(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(PaymentParams, Fingerprint), ApiError> {
    require_media_type(content_type, JSON_MEDIA_TYPE)?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("Invalid JSON body: {e}")))?;
    let Value::Object(object) = value else {
        return Err(ApiError::invalid_request(
            "Invalid JSON body: expected an object",
        ));
    };

    let order_ref = json_string(&object, "order_ref")?
        .ok_or_else(|| missing("order_ref"))?
        .to_owned();
    let amount = match object.get("amount") {
        None | Some(Value::Null) => return Err(missing("amount")),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => match n.as_u64() {
            Some(amount) if amount > 0 => amount,
            _ => return Err(amount_too_small()),
        },
        Some(other) => {
            return Err(ApiError::invalid_param(
                "amount",
                format!("Invalid integer: {other}"),
            ))
        }
    };
    let currency =
        parse_currency(json_string(&object, "currency")?.ok_or_else(|| missing("currency"))?)?;
    let payment_method = json_string(&object, "payment_method")?
        .ok_or_else(|| missing("payment_method"))?
        .to_owned();
    let customer = json_string(&object, "customer")?.map(str::to_owned);

    let mut metadata = BTreeMap::from([("order_ref".to_owned(), order_ref)]);
    if let Some(customer) = customer {
        metadata.insert("customer".to_owned(), customer);
    }
    let mut fingerprint = metadata.clone();
    fingerprint.insert("amount".to_owned(), amount.to_string());
    fingerprint.insert("currency".to_owned(), currency.clone());
    fingerprint.insert("payment_method".to_owned(), payment_method.clone());

    let params = PaymentParams {
        amount,
        currency,
        payment_method,
        confirm: true,
        return_url: None,
        metadata,
    };
    Ok((params, Fingerprint(fingerprint)))
}

/// The one search query the simulator supports: Stripe's metadata equality, `metadata['KEY']:'VALUE'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetadataEquals {
    pub key: String,
    pub value: String,
}

/// Parses the query string of `GET /v1/payment_intents/search`, whose `query` must be a
/// [`MetadataEquals`].
///
/// Other parameters, such as Stripe's `limit` or `page`, are ignored rather than refused, so that
/// a client written for Stripe works unchanged; every match is answered in one page anyway.
pub(crate) fn parse_search(query_string: Option<&str>) -> Result<MetadataEquals, ApiError> {
    let unsupported = |problem: String| {
        ApiError::invalid_param(
            "query",
            format!(
                "{problem} paysim supports exactly one search query form, Stripe's metadata \
                 equality metadata['KEY']:'VALUE' (single or double quotes, a backslash escapes \
                 the next character), which finds the PaymentIntents created through POST \
                 /v1/payment_intents whose metadata KEY equals VALUE."
            ),
        )
    };
    let params = query_params(query_string)?;
    match params.get("query").filter(|query| !query.trim().is_empty()) {
        None => Err(unsupported("Missing required param: query.".to_owned())),
        Some(query) => metadata_equals(query)
            .ok_or_else(|| unsupported(format!("Unsupported search query: {query}."))),
    }
}

/// Parses the query string of `GET /v1/orders`: the `Idempotency-Key` to look up, required.
pub(crate) fn parse_orders_lookup(query_string: Option<&str>) -> Result<String, ApiError> {
    let mut params = query_params(query_string)?;
    params
        .remove("idempotency_key")
        .filter(|key| !key.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_param(
                "idempotency_key",
                "Missing required param: idempotency_key. GET /v1/orders?idempotency_key=KEY \
                 lists the orders created through POST /v1/orders with Idempotency-Key: KEY.",
            )
        })
}

fn query_params(query_string: Option<&str>) -> Result<BTreeMap<String, String>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query_string.unwrap_or(""))
        .map_err(|e| ApiError::invalid_request(format!("Invalid query string: {e}")))?;
    unique_params(pairs)
}

/// The parameters by name; a name sent twice is refused, as Stripe does, rather than guessed at.
fn unique_params(pairs: Vec<(String, String)>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut params = BTreeMap::new();
    for (name, value) in pairs {
        if params.contains_key(&name) {
            return Err(ApiError::invalid_param(
                &name,
                format!("Received duplicate parameter: {name}"),
            ));
        }
        params.insert(name, value);
    }
    Ok(params)
}

/// `metadata['KEY']:'VALUE'` with whitespace around it, and nothing else.
fn metadata_equals(query: &str) -> Option<MetadataEquals> {
    let rest = query.trim().strip_prefix("metadata[")?;
    let (key, rest) = quoted(rest)?;
    let (value, rest) = quoted(rest.strip_prefix("]:")?)?;
    (!key.is_empty() && rest.is_empty()).then_some(MetadataEquals { key, value })
}

/// The string in single or double quotes that `input` starts with, unescaped, and the rest.
fn quoted(input: &str) -> Option<(String, &str)> {
    let mut chars = input.char_indices();
    let (_, quote) = chars.next().filter(|&(_, c)| c == '\'' || c == '"')?;
    let mut text = String::new();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => text.push(chars.next()?.1),
            c if c == quote => return Some((text, &input[at + c.len_utf8()..])),
            c => text.push(c),
        }
    }
    None
}

fn require_media_type(content_type: Option<&str>, expected: &str) -> Result<(), ApiError> {
    let media_type = content_type
        .and_then(|ct| ct.split(';').next())
        .map(str::trim);
    match media_type {
        Some(mt) if mt.eq_ignore_ascii_case(expected) => Ok(()),
        _ => Err(ApiError::invalid_request(format!(
            "Invalid Content-Type {}: this endpoint expects {expected}",
            content_type.map_or_else(|| "(none)".to_owned(), |ct| format!("'{ct}'"))
        ))),
    }
}

fn required<'a>(form: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    match form.get(name) {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(missing(name)),
    }
}

fn missing(name: &str) -> ApiError {
    ApiError::invalid_param(name, format!("Missing required param: {name}."))
}

fn amount_too_small() -> ApiError {
    ApiError::invalid_param("amount", "This value must be greater than or equal to 1.")
}

fn parse_amount(raw: &str) -> Result<u64, ApiError> {
    // Stripe rejects signs, spaces and decimals alike as "Invalid integer".
    if !raw.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return Err(ApiError::invalid_param(
            "amount",
            format!("Invalid integer: {raw}"),
        ));
    }
    match raw.parse::<i128>() {
        Ok(n) if n < 1 => Err(amount_too_small()),
        Ok(n) => u64::try_from(n)
            .map_err(|_| ApiError::invalid_param("amount", format!("Invalid integer: {raw}"))),
        Err(_) => Err(ApiError::invalid_param(
            "amount",
            format!("Invalid integer: {raw}"),
        )),
    }
}

fn parse_currency(raw: &str) -> Result<String, ApiError> {
    if raw.len() == 3 && raw.bytes().all(|b| b.is_ascii_lowercase()) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid_param(
            "currency",
            format!("Invalid currency: {raw}. A currency is three lowercase letters, such as usd."),
        ))
    }
}

fn optional_bool(form: &BTreeMap<String, String>, name: &str) -> Result<Option<bool>, ApiError> {
    form.get(name)
        .map(|value| match value.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(ApiError::invalid_param(
                name,
                format!("Invalid boolean: {other}"),
            )),
        })
        .transpose()
}

fn json_string<'a>(
    object: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, ApiError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::invalid_param(
            name,
            format!("Invalid {name}: expected a string, got {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
    const JSON: Option<&str> = Some("application/json; charset=utf-8");

    fn form_error(body: &str) -> ApiError {
        parse_form(FORM, body.as_bytes()).unwrap_err()
    }

    fn search(query: &str) -> Result<MetadataEquals, ApiError> {
        let query_string = serde_urlencoded::to_string([("query", query)]).unwrap();
        parse_search(Some(&query_string))
    }

    fn equals(key: &str, value: &str) -> MetadataEquals {
        MetadataEquals {
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    #[test]
    fn search_accepts_metadata_equality_in_either_quotes() {
        for query in [
            "metadata['chargeonce_key']:'k-1'",
            r#"metadata["chargeonce_key"]:"k-1""#,
            r#"metadata["chargeonce_key"]:'k-1'"#,
            "  metadata['chargeonce_key']:'k-1'\n",
        ] {
            assert_eq!(
                search(query).unwrap(),
                equals("chargeonce_key", "k-1"),
                "{query}"
            );
        }
        assert_eq!(
            search(r#"metadata['a b']:'it\'s "x" \\'"#).unwrap(),
            equals("a b", r#"it's "x" \"#)
        );
        // Unencoded in the query string works too, and other parameters are ignored.
        let raw = "limit=1&query=metadata['k']:'v'&expand[]=data.customer";
        assert_eq!(parse_search(Some(raw)).unwrap(), equals("k", "v"));
    }

    #[test]
    fn search_refuses_every_other_query_naming_the_supported_form() {
        for query in [
            "",
            "   ",
            "status:'succeeded'",
            "metadata['k']:'v' AND metadata['o']:'p'",
            "metadata['k']:'v' OR metadata['o']:'p'",
            "metadata['k']:'v' metadata['o']:'p'",
            "-metadata['k']:'v'",
            "metadata[k]:'v'",
            "metadata['k']:v",
            "metadata['k']:'v\"",
            "metadata['k']:'v",
            "metadata['k']:'v\\'",
            "metadata['k'] : 'v'",
            "metadata['k']~'v'",
            "metadata['']:'v'",
            "metadata.k:'v'",
        ] {
            let error = search(query).unwrap_err();
            assert_eq!(error.kind, "invalid_request_error", "{query}");
            assert_eq!(error.param.as_deref(), Some("query"), "{query}");
            assert!(
                error.message.contains("metadata['KEY']:'VALUE'"),
                "{query}: {}",
                error.message
            );
        }
        for query_string in [None, Some(""), Some("limit=3")] {
            let error = parse_search(query_string).unwrap_err();
            assert!(error.message.starts_with("Missing required param: query."));
        }
        let twice = parse_search(Some("query=metadata['k']:'v'&query=metadata['k']:'w'"));
        assert!(twice.unwrap_err().message.contains("duplicate"));
    }

    #[test]
    fn orders_lookup_requires_one_idempotency_key() {
        assert_eq!(
            parse_orders_lookup(Some("idempotency_key=k%2B1+2")).unwrap(),
            "k+1 2"
        );
        for query_string in [None, Some(""), Some("idempotency_key="), Some("key=k")] {
            let error = parse_orders_lookup(query_string).unwrap_err();
            assert_eq!(error.param.as_deref(), Some("idempotency_key"));
            assert!(error
                .message
                .contains("Missing required param: idempotency_key"));
        }
        let twice = parse_orders_lookup(Some("idempotency_key=a&idempotency_key=b"));
        assert_eq!(twice.unwrap_err().param.as_deref(), Some("idempotency_key"));
    }

    #[test]
    fn form_field_order_does_not_change_the_fingerprint() {
        let a = "amount=100&currency=usd&payment_method=pm_card_visa&metadata[order_ref]=o1";
        let b = "metadata%5Border_ref%5D=o1&payment_method=pm_card_visa&currency=usd&amount=100";
        let (pa, fa) = parse_form(FORM, a.as_bytes()).unwrap();
        let (pb, fb) = parse_form(FORM, b.as_bytes()).unwrap();
        assert_eq!(pa, pb);
        assert_eq!(fa, fb);
        assert_eq!(pa.metadata["order_ref"], "o1");
        assert!(!pa.confirm);
    }

    #[test]
    fn form_validation_names_the_param() {
        for (body, param) in [
            ("currency=usd&payment_method=pm_card_visa", "amount"),
            (
                "amount=0&currency=usd&payment_method=pm_card_visa",
                "amount",
            ),
            (
                "amount=-5&currency=usd&payment_method=pm_card_visa",
                "amount",
            ),
            (
                "amount=1.5&currency=usd&payment_method=pm_card_visa",
                "amount",
            ),
            (
                "amount=100&currency=USD&payment_method=pm_card_visa",
                "currency",
            ),
            ("amount=100&payment_method=pm_card_visa", "currency"),
            ("amount=100&currency=usd", "payment_method"),
            (
                "amount=100&currency=usd&payment_method=pm_card_visa&confirm=yes",
                "confirm",
            ),
            (
                "amount=1&amount=2&currency=usd&payment_method=pm_card_visa",
                "amount",
            ),
        ] {
            let error = form_error(body);
            assert_eq!(error.kind, "invalid_request_error", "{body}");
            assert_eq!(error.param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn confirm_needs_a_return_url_or_no_redirects() {
        let base = "amount=100&currency=usd&payment_method=pm_card_visa&confirm=true";
        let error = form_error(base);
        assert!(error.message.contains("return_url"), "{}", error.message);
        assert!(
            error.message.contains("allow_redirects"),
            "{}",
            error.message
        );

        let with_url = format!("{base}&return_url=https%3A%2F%2Fshop.example%2Fdone");
        let params = parse_form(FORM, with_url.as_bytes()).unwrap().0;
        assert!(params.confirm);
        assert_eq!(
            params.return_url.as_deref(),
            Some("https://shop.example/done")
        );
        let no_redirects = format!(
            "{base}&automatic_payment_methods[enabled]=true&automatic_payment_methods[allow_redirects]=never"
        );
        assert!(parse_form(FORM, no_redirects.as_bytes()).is_ok());
        let redirects = format!(
            "{base}&automatic_payment_methods[enabled]=true&automatic_payment_methods[allow_redirects]=always"
        );
        assert!(parse_form(FORM, redirects.as_bytes()).is_err());
    }

    #[test]
    fn wrong_content_type_is_rejected() {
        let body = b"amount=100&currency=usd&payment_method=pm_card_visa";
        assert!(parse_form(Some("application/json"), body).is_err());
        assert!(parse_form(None, body).is_err());
        assert!(parse_order_json(FORM, b"{}").is_err());
    }

    #[test]
    fn json_orders_ignore_unknown_members_in_the_fingerprint() {
        let a = br#"{"order_ref":"o1","amount":100,"currency":"usd","payment_method":"pm_card_visa","trace":1}"#;
        let b = br#"{"payment_method":"pm_card_visa","currency":"usd","amount":100,"order_ref":"o1","trace":2}"#;
        let (pa, fa) = parse_order_json(JSON, a).unwrap();
        let (_, fb) = parse_order_json(JSON, b).unwrap();
        assert_eq!(fa, fb);
        assert!(pa.confirm);
        assert_eq!(pa.metadata.get("customer"), None);
    }

    #[test]
    fn json_validation_names_the_param() {
        for (body, param) in [
            (
                r#"{"amount":100,"currency":"usd","payment_method":"pm_card_visa"}"#,
                "order_ref",
            ),
            (
                r#"{"order_ref":"o","currency":"usd","payment_method":"pm_card_visa"}"#,
                "amount",
            ),
            (
                r#"{"order_ref":"o","amount":0,"currency":"usd","payment_method":"pm_card_visa"}"#,
                "amount",
            ),
            (
                r#"{"order_ref":"o","amount":-1,"currency":"usd","payment_method":"pm_card_visa"}"#,
                "amount",
            ),
            (
                r#"{"order_ref":"o","amount":1.5,"currency":"usd","payment_method":"pm_card_visa"}"#,
                "amount",
            ),
            (
                r#"{"order_ref":"o","amount":"100","currency":"usd","payment_method":"pm_card_visa"}"#,
                "amount",
            ),
            (
                r#"{"order_ref":"o","amount":100,"currency":"usdd","payment_method":"pm_card_visa"}"#,
                "currency",
            ),
            (
                r#"{"order_ref":"o","amount":100,"currency":"usd"}"#,
                "payment_method",
            ),
            (
                r#"{"order_ref":"o","amount":100,"currency":"usd","payment_method":"pm_card_visa","customer":7}"#,
                "customer",
            ),
        ] {
            let error = parse_order_json(JSON, body.as_bytes()).unwrap_err();
            assert_eq!(error.param.as_deref(), Some(param), "{body}");
        }
        assert!(parse_order_json(JSON, b"[]").unwrap_err().param.is_none());
        assert!(parse_order_json(JSON, b"{").unwrap_err().param.is_none());
    }
}

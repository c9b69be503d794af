<?php
// Signs ChargeOnce order tokens on a storefront's server: what the edge
// checks before it forwards an order (README, "Order tokens";
// protocol/src/token.rs is the reference). hash_hmac only, no dependencies;
// PHP 8.1 or later.
//
//   require 'chargeonce_token.php';
//   $token = chargeonce_sign_order_token([
//       'order_ref' => 'ord_1042', 'amount' => 1999, 'currency' => 'usd',
//       'customer' => 'cus_1', 'expires_at' => time() + 900,
//   ], getenv('ORDER_TOKEN_SECRET'));
//
// Format: `v1.<payload>.<mac>`; payload is base64url (no padding) of the
// claims as JSON, in this order and without spaces; mac is base64url of
// HMAC-SHA256 over `chargeonce-order-token.v1.<payload>`.

declare(strict_types=1);

/** The shortest secret the edge accepts, in bytes (token::MIN_SECRET_LEN). */
const CHARGEONCE_MIN_SECRET_BYTES = 32;

/** The largest amount every signer holds exactly (JavaScript's 2^53 - 1). */
const CHARGEONCE_MAX_WHOLE = 9007199254740991;

/** Claims or a secret the edge would never accept; `field` names which. */
final class ChargeOnceOrderTokenError extends InvalidArgumentException
{
    public function __construct(public readonly string $field, string $message)
    {
        parent::__construct("order token: $field $message");
    }
}

/**
 * Signs `$claims` (order_ref, amount, currency, customer, expires_at) with
 * `$secret` (bytes; a PHP string is its UTF-8 bytes) and returns the token.
 * Throws ChargeOnceOrderTokenError for a secret under 32 bytes, an amount
 * that is not a positive whole number (of at most 2^53 - 1), or a missing,
 * extra or mistyped claim.
 */
function chargeonce_sign_order_token(array $claims, string $secret): string
{
    if (strlen($secret) < CHARGEONCE_MIN_SECRET_BYTES) {
        throw new ChargeOnceOrderTokenError('secret', 'must be at least ' . CHARGEONCE_MIN_SECRET_BYTES . ' bytes');
    }
    // As serde_json writes them: no escaped slashes, non-ASCII characters
    // and the line separators U+2028/U+2029 as they are.
    $json = json_encode(
        chargeonce_checked_claims($claims),
        JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_LINE_TERMINATORS | JSON_THROW_ON_ERROR,
    );
    $payload = chargeonce_base64url($json);
    $mac = hash_hmac('sha256', "chargeonce-order-token.v1.$payload", $secret, true);
    return "v1.$payload." . chargeonce_base64url($mac);
}

/** The claims in the edge's order, refused unless each is what it expects. */
function chargeonce_checked_claims(array $claims): array
{
    $names = ['order_ref', 'amount', 'currency', 'customer', 'expires_at'];
    foreach (array_keys($claims) as $name) {
        if (!in_array($name, $names, true)) {
            throw new ChargeOnceOrderTokenError((string) $name, 'is not a claim the edge knows');
        }
    }
    foreach (['order_ref', 'currency', 'customer'] as $name) {
        if (!is_string($claims[$name] ?? null) || $claims[$name] === '') {
            throw new ChargeOnceOrderTokenError($name, 'must be a non-empty string');
        }
    }
    foreach (['amount', 'expires_at'] as $name) {
        $value = $claims[$name] ?? null;
        if (!is_int($value) || $value <= 0 || $value > CHARGEONCE_MAX_WHOLE) {
            throw new ChargeOnceOrderTokenError(
                $name,
                'must be a positive whole number up to 2^53 - 1, not ' . json_encode($value),
            );
        }
    }
    $ordered = [];
    foreach ($names as $name) {
        $ordered[$name] = $claims[$name];
    }
    return $ordered;
}

function chargeonce_base64url(string $bytes): string
{
    return rtrim(strtr(base64_encode($bytes), '+/', '-_'), '=');
}

<?php
// The PHP signer against the shared vectors (tokens/vectors.json).
// Run: php tokens/php/test.php (exits non-zero on a failure).

declare(strict_types=1);

require __DIR__ . '/chargeonce_token.php';

$vectors = json_decode(file_get_contents(__DIR__ . '/../vectors.json'), true, flags: JSON_THROW_ON_ERROR);
$failures = 0;
$passed = 0;

function check(bool $ok, string $name, string $detail = ''): void
{
    global $failures, $passed;
    if ($ok) {
        $passed++;
        echo "ok - $name\n";
    } else {
        $failures++;
        echo "not ok - $name" . ($detail === '' ? '' : ": $detail") . "\n";
    }
}

/** The error a signing raises, or null. */
function refusal(array $claims, string $secret): ?ChargeOnceOrderTokenError
{
    try {
        chargeonce_sign_order_token($claims, $secret);
        return null;
    } catch (ChargeOnceOrderTokenError $e) {
        return $e;
    }
}

foreach ($vectors['signed'] as $v) {
    $token = chargeonce_sign_order_token($v['claims'], $v['secret']);
    check($token === $v['token'], "signs: {$v['name']}", "got $token");
}
foreach ($vectors['refused'] as $v) {
    $e = refusal($v['claims'], $v['secret']);
    check($e !== null && $e->field === $v['field'], "refuses: {$v['name']}", $e === null ? 'signed it' : $e->getMessage());
}
$first = $vectors['signed'][0];
$e = refusal($first['claims'] + ['tip' => 5], $first['secret']);
check($e !== null && $e->field === 'tip', 'refuses a claim the edge does not know');
$claims = $first['claims'];
unset($claims['customer']);
$e = refusal($claims, $first['secret']);
check($e !== null && $e->field === 'customer', 'refuses a missing claim');
check(
    chargeonce_sign_order_token(array_reverse($first['claims'], true), $first['secret']) === $first['token'],
    "writes the claims in the edge's order",
);

echo "# pass $passed, fail $failures\n";
exit($failures === 0 ? 0 : 1);
